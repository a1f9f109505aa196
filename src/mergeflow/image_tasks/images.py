"""Decode an image once and bring it to the stored form: RGB, shorter side resized (bicubic), centre-cropped square.

This is open_clip's evaluation geometry, `Resize(size, BICUBIC)` + `CenterCrop(size)`, written with Pillow alone so
that data preparation does not import torch; the tests compare it pixel for pixel against torchvision.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# What Pillow raises for bytes it cannot turn into pixels (unknown format, truncated or corrupt data).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def decode(data: bytes) -> Image.Image:
    """Decode encoded image bytes fully (`load`), so truncated files fail here and not later."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's `Resize(int)` output (width, height): the shorter side becomes `size`, the longer truncates."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """RGB conversion, bicubic resize of the shorter side to `size`, centre crop to size x size; uint8 HWC."""
    image = image.convert("RGB")
    new_size = resized_size(image.width, image.height, size)
    if new_size != image.size:  # torchvision skips resampling when the size already matches
        image = image.resize(new_size, resample=Image.Resampling.BICUBIC)
    # torchvision's center_crop offsets: int(round((extent - size) / 2)); the resized image is never smaller.
    left = int(round((image.width - size) / 2.0))
    top = int(round((image.height - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def to_array(payload: bytes | Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Encoded bytes (hub sources), a PIL image or a uint8 array (torchvision sources) -> stored image."""
    if isinstance(payload, bytes | bytearray | memoryview):
        image = decode(bytes(payload))
    elif isinstance(payload, np.ndarray):
        image = Image.fromarray(payload)
    else:
        image = payload
    return resize_center_crop(image, size)


def to_array_or_error(item: tuple[bytes | Image.Image | np.ndarray, int]) -> np.ndarray | str:
    """Worker-side `to_array`: a decode failure comes back as its message so the caller can name the row."""
    payload, size = item
    try:
        return to_array(payload, size)
    except DECODE_ERRORS as err:
        return f"cannot decode image ({type(err).__name__}: {err})"
