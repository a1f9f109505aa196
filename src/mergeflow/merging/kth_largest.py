"""Exact k-th largest value of a vector seen piece by piece, without ever holding the whole vector.

TIES keeps, per task, the top-k fraction of |τ_t| over the whole flattened model. Sorting the
concatenation would hold one full model per task; instead a radix select over the IEEE bit patterns
(which order like the values for non-negative floats) reads the pieces once per 16-bit digit:
two passes for float32, four for float64, memory 2^16 counters.
"""

from __future__ import annotations

import torch

_DIGIT_BITS = 16
_DIGIT_MASK = (1 << _DIGIT_BITS) - 1
_BIT_VIEWS = {torch.float32: torch.int32, torch.float64: torch.int64}


class KthLargest:
    """The k-th largest of non-negative floats observed in `passes` identical passes over the same pieces."""

    def __init__(self, k: int, dtype: torch.dtype, device: str | torch.device = "cpu") -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if dtype not in _BIT_VIEWS:
            raise ValueError(f"radix selection needs float32 or float64 values, got {dtype}")
        self._dtype = dtype
        self._device = device
        self._width = torch.finfo(dtype).bits
        self._rank = k  # rank still to find among values sharing the settled prefix
        self._prefix = 0  # high-order bits settled so far
        self._shift = self._width - _DIGIT_BITS
        self._histogram = torch.zeros(1 << _DIGIT_BITS, dtype=torch.int64, device=device)

    @property
    def passes(self) -> int:
        return self._width // _DIGIT_BITS

    @property
    def done(self) -> bool:
        return self._shift < 0

    def observe(self, magnitudes: torch.Tensor) -> None:
        """Count this piece's values (all >= 0, in the selector's dtype) in the current digit's histogram."""
        bits = magnitudes.reshape(-1).view(_BIT_VIEWS[self._dtype])
        settled_width = self._width - self._shift - _DIGIT_BITS
        if settled_width > 0:
            bits = bits[(bits >> (self._shift + _DIGIT_BITS)) == self._prefix]
        digits = ((bits >> self._shift) & _DIGIT_MASK).long()
        self._histogram += torch.bincount(digits, minlength=1 << _DIGIT_BITS).to(self._histogram.device)

    def end_pass(self) -> None:
        """Settle the current digit: the largest digit whose count from the top reaches the rank sought."""
        counts = self._histogram.tolist()
        above = 0
        for digit in range(len(counts) - 1, -1, -1):
            if above + counts[digit] >= self._rank:
                self._rank -= above
                self._prefix = (self._prefix << _DIGIT_BITS) | digit
                self._shift -= _DIGIT_BITS
                self._histogram.zero_()
                return
            above += counts[digit]
        raise ValueError(f"asked for the {self._rank}-th largest of only {above} values")

    def value(self) -> float:
        if not self.done:
            raise RuntimeError("value() before every pass was observed")
        return torch.tensor(self._prefix, dtype=_BIT_VIEWS[self._dtype]).view(self._dtype).item()
