"""Type aliases shared across the library."""

from __future__ import annotations

import torch

StateDict = dict[str, torch.Tensor]
