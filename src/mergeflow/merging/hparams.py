"""Typed hyper-parameter specifications: parse a CLI string or a YAML value, check it, describe it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class HParamValueError(ValueError):
    """A value outside what the hyper-parameter allows; the registry adds the method and key."""


def _as_float(raw: Any) -> float:
    # bool is an int subclass; `true` in a YAML file is a mistake, not 1.0.
    if isinstance(raw, bool):
        raise HParamValueError(f"expected a number, got {raw!r}")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise HParamValueError(f"expected a number, got {raw!r}") from None
    else:
        raise HParamValueError(f"expected a number, got {raw!r}")
    if not math.isfinite(value):
        raise HParamValueError(f"expected a finite number, got {raw!r}")
    return value


def _as_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise HParamValueError(f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            raise HParamValueError(f"expected an integer, got {raw!r}") from None
    raise HParamValueError(f"expected an integer, got {raw!r}")


def _format_number(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


@dataclass(frozen=True)
class Real:
    """A real number in [low, high] (an open end where `low_open` / `high_open`)."""

    name: str
    default: float
    summary: str
    low: float = -math.inf
    high: float = math.inf
    high_open: bool = False
    low_open: bool = False

    @property
    def type_name(self) -> str:
        return "float"

    @property
    def allowed(self) -> str:
        if math.isinf(self.low) and math.isinf(self.high):
            return "any finite number"
        closing = ")" if self.high_open or math.isinf(self.high) else "]"
        opening = "(" if math.isinf(self.low) or self.low_open else "["
        return f"{opening}{_format_number(self.low)}, {_format_number(self.high)}{closing}"

    def contains(self, value: float) -> bool:
        below_high = value < self.high if self.high_open else value <= self.high
        above_low = self.low < value if self.low_open else self.low <= value
        return above_low and below_high

    def parse(self, raw: Any) -> float:
        value = _as_float(raw)
        if not self.contains(value):
            raise HParamValueError(f"{value:g} is outside {self.allowed}")
        return value


@dataclass(frozen=True)
class Integer:
    """An integer in [low, high]."""

    name: str
    default: int
    summary: str
    low: int = 0
    high: int = 2**63 - 1

    @property
    def type_name(self) -> str:
        return "int"

    @property
    def allowed(self) -> str:
        return f"integers >= {self.low}" if self.high == 2**63 - 1 else f"integers in [{self.low}, {self.high}]"

    def parse(self, raw: Any) -> int:
        value = _as_int(raw)
        if not self.low <= value <= self.high:
            raise HParamValueError(f"{value} is outside {self.allowed}")
        return value


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of names."""

    name: str
    default: str
    summary: str
    options: tuple[str, ...] = ()

    @property
    def type_name(self) -> str:
        return "choice"

    @property
    def allowed(self) -> str:
        return "one of " + ", ".join(repr(option) for option in self.options)

    def parse(self, raw: Any) -> str:
        value = raw.strip() if isinstance(raw, str) else raw
        if value not in self.options:
            raise HParamValueError(f"{raw!r} is not {self.allowed}")
        return value


@dataclass(frozen=True)
class RealOrPerTask:
    """One real number shared by every task, or one per task ("0.4,0.5" on the command line, a list in YAML).

    The list's length can only be checked against the number of tasks at merge time.
    """

    name: str
    default: float
    summary: str
    low: float = 0.0

    @property
    def type_name(self) -> str:
        return "float or per-task list"

    @property
    def allowed(self) -> str:
        return f"numbers >= {_format_number(self.low)}, one or one per task (comma-separated)"

    def parse(self, raw: Any) -> float | tuple[float, ...]:
        if isinstance(raw, str):
            items: list[Any] = [item for item in raw.split(",")]
        elif isinstance(raw, (list, tuple)):
            items = list(raw)
        else:
            items = [raw]
        if not items:
            raise HParamValueError("expected at least one number")
        values = tuple(_as_float(item) for item in items)
        for value in values:
            if value < self.low:
                raise HParamValueError(f"{value:g} is outside {self.allowed}")
        return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class Flag:
    """True or false (YAML booleans, or "true"/"false" on the command line)."""

    name: str
    default: bool
    summary: str

    @property
    def type_name(self) -> str:
        return "bool"

    @property
    def allowed(self) -> str:
        return "true or false"

    def parse(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        raise HParamValueError(f"expected true or false, got {raw!r}")


HParam = Real | Integer | Choice | RealOrPerTask | Flag
