"""The look of each tiny task's images (its domain) and the shift that every task split shares.

Real merging benchmarks are distinct domains (satellite photos, digits, traffic signs, textures): an
encoder's activations on one task's images differ from another's, so that each fine-tune changes the
weights mostly along its own task's input directions, and the tasks can be merged at all. Each tiny task
therefore has a look of its own, fixed by its name: a rotation of the colour cube about mid-grey, a tint
and a low-frequency coloured texture. Pre-training images and task splits carry it alike.

The task splits (train, val, test) also carry one shift that the pre-training images never have: a fixed
low-frequency pattern, as if every downstream dataset came from another camera than the pre-training
corpus. Adapting to it is what all fine-tunes learn in common, as real fine-tunes of CLIP share the move
from web images to the downstream datasets; it is the part of θ_t − θ_0 that weight averaging keeps.

Both are applied to finished uint8 images, so the content generators (`mergeflow.tiny.tasks`) stay as
they are and `style = shift = 0` gives their images back unchanged.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from mergeflow.io import InputError

# At style 1: the range of a task's colour-rotation angle (radians), and the largest change a tint or the
# texture makes to a channel (in [0, 1] intensity units). A rotation of the colour cube about its centre
# keeps every colour difference, so the content keeps its contrast (only clipping at the cube's faces loses
# some); the tint and texture are small enough to leave most of it too.
ROTATION_ANGLES = (np.pi / 2, np.pi)
TINT_AMPLITUDE = 0.15
TEXTURE_AMPLITUDE = 0.175

# Plane waves summed into a texture; frequencies in cycles per image side, low enough to read as a
# lighting or colour cast rather than as a pattern the task's content could be confused with.
_WAVES = 4
_FREQUENCY_RANGE = (0.5, 2.0)

# Distinct random streams for the task looks and for the shared shift.
_LOOK_STREAM = 0
_SHIFT_STREAM = 1
_SHIFT_NAME = "task-split shift"


@dataclass(frozen=True)
class Waves:
    """A coloured sum of plane waves, resolution-free: frequencies [w, 2], phases [w], colours [w, 3]."""

    frequencies: np.ndarray
    phases: np.ndarray
    colours: np.ndarray

    def render(self, size: int) -> np.ndarray:
        """[size, size, 3] float32 in [-1, 1] (the largest magnitude is exactly 1), sampled at pixel centres."""
        centres = (np.arange(size, dtype=np.float64) + 0.5) / size
        y, x = np.meshgrid(centres, centres, indexing="ij")
        field = np.zeros((size, size, 3))
        for (fx, fy), phase, colour in zip(self.frequencies, self.phases, self.colours):
            field += np.cos(2 * np.pi * (fx * x + fy * y) + phase)[..., None] * colour
        return (field / np.abs(field).max()).astype(np.float32)


@dataclass(frozen=True)
class TaskLook:
    """One task's domain: a rotation of RGB about mid-grey (unit axis [3], angle), a tint [3] in [-1, 1], a texture."""

    rotation_axis: np.ndarray
    rotation_angle: float
    tint: np.ndarray
    texture: Waves

    def colour_rotation(self, style: float) -> np.ndarray:
        """[3, 3] rotation by style·angle about the axis (Rodrigues' formula); the identity at style 0."""
        x, y, z = self.rotation_axis
        cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
        angle = style * self.rotation_angle
        return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * (cross @ cross)


def _rng(name: str, stream: int) -> np.random.Generator:
    # crc32 rather than hash(): Python salts string hashes per process.
    return np.random.default_rng([zlib.crc32(name.encode("utf-8")), stream])


def _random_waves(rng: np.random.Generator) -> Waves:
    magnitudes = rng.uniform(*_FREQUENCY_RANGE, (_WAVES, 2))
    signs = rng.choice((-1.0, 1.0), (_WAVES, 2))
    return Waves(magnitudes * signs, rng.uniform(0.0, 2 * np.pi, _WAVES), rng.normal(size=(_WAVES, 3)))


def task_look(task: str) -> TaskLook:
    """The look of `task`, fixed by its name: the same in every config, seed and image size."""
    rng = _rng(task, _LOOK_STREAM)
    axis = rng.normal(size=3)
    angle = float(rng.uniform(*ROTATION_ANGLES))
    return TaskLook(axis / np.linalg.norm(axis), angle, rng.uniform(-1.0, 1.0, 3), _random_waves(rng))


def split_shift() -> Waves:
    """The pattern every task split shares and no pre-training image has."""
    return _random_waves(_rng(_SHIFT_NAME, _SHIFT_STREAM))


def _check_strength(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{name} must lie in [0, 1], got {value!r}")
    return float(value)


def apply_domain(images: np.ndarray, task: str, *, style: float, shift: float) -> np.ndarray:
    """`images` (uint8 NHWC) in `task`'s look at strength `style`, plus the task-split shift at `shift`.

    Pre-training images take shift 0. Deterministic; style = shift = 0 returns an equal copy.
    """
    style = _check_strength("data.domain_style", style)
    shift = _check_strength("data.split_shift", shift)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"expected square uint8 NHWC images, got {images.dtype} {images.shape}")
    if style == 0.0 and shift == 0.0:
        return images.copy()
    size = images.shape[1]
    look = task_look(task)
    pixels = images.astype(np.float32) * np.float32(1.0 / 255.0)
    pixels = (pixels - 0.5) @ look.colour_rotation(style).T.astype(np.float32) + 0.5
    cast = style * (TINT_AMPLITUDE * look.tint + TEXTURE_AMPLITUDE * look.texture.render(size))
    cast = cast + shift * split_shift().render(size)
    pixels += cast.astype(np.float32)
    np.clip(pixels, 0.0, 1.0, out=pixels)
    return (pixels * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)
