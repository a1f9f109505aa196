"""Which state-dict tensors a method treats specially, decided from the key and shape alone."""

from __future__ import annotations

import re

import torch

# The four weight matrices of every residual block that CART (and lowrank_ta) make low-rank. The prefix
# before `transformer.` is free so that image-encoder keys with or without `visual.` / `model.visual.` match.
_CART_MATRIX = re.compile(
    r"(?:^|\.)transformer\.resblocks\.\d+\."
    r"(?:attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$"
)


def is_cart_matrix(key: str) -> bool:
    """True for the attention and MLP weight matrices of an open_clip residual block."""
    return _CART_MATRIX.search(key) is not None


def is_matrix(shape: torch.Size | tuple[int, ...]) -> bool:
    return len(shape) == 2
