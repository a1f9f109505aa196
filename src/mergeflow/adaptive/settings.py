"""Settings of each test-time adaptive method, with the defaults of the official code (docs/methods.md).

Every dataclass is keyword-only and checks itself on construction (InputError naming the field).
`settings_to_json` / `settings_from_json` let a learned-merge artefact record the settings that define it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from mergeflow.io import InputError
from mergeflow.merging.entries import base_method

GRANULARITIES = ("task", "layer")
ADARANK_BASES = ("cart", "task_arithmetic")


def _require(ok: bool, method: str, field: str, expected: str, value: Any) -> None:
    if not ok:
        raise InputError(f"{method}: setting {field!r} must be {expected}, got {value!r}")


def _check_clamp(method: str, clamp: tuple[float, float] | None, init: float, init_field: str) -> None:
    if clamp is None:
        return
    _require(len(clamp) == 2 and clamp[0] <= clamp[1], method, "clamp", "None or (low, high) with low <= high", clamp)
    _require(clamp[0] <= init <= clamp[1], method, init_field, f"inside clamp {tuple(clamp)}", init)


@dataclass(frozen=True, kw_only=True)
class AdaptationSettings:
    """The optimisation every method shares: Adam without weight decay on Σ_t mean prediction entropy."""

    method: ClassVar[str]
    display: ClassVar[str]  # in tables and figures

    steps: int = field(default=500, metadata={"help": "Adam steps"})
    batch_size: int = field(default=16, metadata={"help": "unlabeled test images per task in each step"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "Adam betas"})
    seed: int = field(default=0, metadata={"help": "seed of the batch order (one generator per task)"})
    bf16_autocast: bool = field(
        default=False,
        metadata={"help": "CUDA only: the encoder's forward pass under bfloat16 autocast (weights, entropies fp32)"},
    )
    # Smaller values hold the activations of fewer images at once (the peak memory of large encoders) and
    # accumulate the gradient over the groups: the same objective, equal up to float rounding.
    tasks_per_pass: int | None = field(
        default=None, metadata={"help": "tasks whose batches share one forward and backward pass; null: all"}
    )

    def __post_init__(self) -> None:
        name = self.method
        _require(self.steps >= 0, name, "steps", "an integer >= 0", self.steps)
        _require(self.batch_size >= 1, name, "batch_size", "an integer >= 1", self.batch_size)
        _require(
            self.tasks_per_pass is None or self.tasks_per_pass >= 1,
            name,
            "tasks_per_pass",
            "None or an integer >= 1",
            self.tasks_per_pass,
        )
        _require(math.isfinite(self.lr) and self.lr > 0, name, "lr", "a positive number", self.lr)
        _require(
            len(self.betas) == 2 and all(0.0 <= beta < 1.0 for beta in self.betas),
            name,
            "betas",
            "two numbers in [0, 1)",
            self.betas,
        )


@dataclass(frozen=True, kw_only=True)
class AdaMergingSettings(AdaptationSettings):
    """AdaMerging: θ = θ_0 + Σ_t λ_t^l τ_t^l, λ one per task ("task") or per task and tensor ("layer").

    The official code clamps λ to [0, 1]; `clamp=None` trains them unconstrained (as FusionBench does).
    """

    method: ClassVar[str] = "adamerging"
    display: ClassVar[str] = "AdaMerging"

    granularity: Literal["task", "layer"] = field(
        default="layer", metadata={"help": "one λ per task, or per task and tensor"}
    )
    init: float = field(default=0.3, metadata={"help": "initial λ"})
    clamp: tuple[float, float] | None = field(
        default=(0.0, 1.0), metadata={"help": "range λ is projected onto after each step; null: unclamped"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.granularity in GRANULARITIES, self.method, "granularity", "'task' or 'layer'", self.granularity)
        _check_clamp(self.method, self.clamp, self.init, "init")


@dataclass(frozen=True, kw_only=True)
class AdaMergingCartSettings(AdaptationSettings):
    """AdaMerging on CART: θ = θ_avg + Σ_t λ_t^l SVD_k(τ̄_t^l) on the CART matrices, λ initialised at CART's `lam`.

    `rank` is CART's rank ratio ρ (k = rank_from_ratio(ρ, shape)), and must be > 0: at ρ = 0 there is no
    low-rank term to weight. Unclamped by default: the CART papers specify no clamp, CART's own λ is
    usually above 1 (1.5 to 2.3 in the released configs), and the CART authors' AdaRank trains these
    coefficients unclamped from such priors.
    """

    method: ClassVar[str] = "adamerging_cart"
    display: ClassVar[str] = "AdaMerging + CART"

    rank: float = field(metadata={"help": "CART's rank ratio ρ in (0, 1]; 'selected': CART's val selection"})
    lam: float = field(metadata={"help": "initial λ (CART's); 'selected': CART's val selection"})
    granularity: Literal["task", "layer"] = field(
        default="layer", metadata={"help": "one λ per task, or per task and tensor"}
    )
    clamp: tuple[float, float] | None = field(
        default=None, metadata={"help": "range λ is projected onto after each step; null: unclamped"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0.0 < self.rank <= 1.0, self.method, "rank", "a rank ratio in (0, 1]", self.rank)
        _require(math.isfinite(self.lam), self.method, "lam", "a finite number", self.lam)
        _require(self.granularity in GRANULARITIES, self.method, "granularity", "'task' or 'layer'", self.granularity)
        _check_clamp(self.method, self.clamp, self.lam, "lam")


@dataclass(frozen=True, kw_only=True)
class AdaRankSettings(AdaptationSettings):
    """AdaRank: a keep/drop mask over each task's singular components of every CART matrix, and one
    coefficient per (task, CART matrix) initialised at `prior`, trained jointly without clamp.

    `base` "cart": origin θ_avg, vectors θ_t − θ_avg; "task_arithmetic": origin θ_0, vectors θ_t − θ_0.
    `initial_rank` ρ keeps the top rank_from_ratio(ρ, shape) components of every (task, matrix) at the
    start. Logits m give the mask sigmoid(m / mask_temperature); the official values are below.
    """

    method: ClassVar[str] = "adarank"
    display: ClassVar[str] = "AdaRank"

    base: Literal["cart", "task_arithmetic"] = field(
        metadata={"help": "cart: θ_avg and θ_t − θ_avg; task_arithmetic: θ_0 and θ_t − θ_0"}
    )
    initial_rank: float = field(
        metadata={"help": "rank ratio of the components kept at the start; 'selected': CART's val selection"}
    )
    prior: float = field(metadata={"help": "initial coefficient of every task and matrix; 'selected': CART's λ"})
    steps: int = field(default=10000, metadata={"help": "Adam steps"})
    mask_temperature: float = field(default=10.0, metadata={"help": "the mask is sigmoid(logit / temperature)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.base in ADARANK_BASES, self.method, "base", "'cart' or 'task_arithmetic'", self.base)
        _require(
            0.0 <= self.initial_rank <= 1.0, self.method, "initial_rank", "a rank ratio in [0, 1]", self.initial_rank
        )
        _require(math.isfinite(self.prior), self.method, "prior", "a finite number", self.prior)
        _require(
            math.isfinite(self.mask_temperature) and self.mask_temperature > 0,
            self.method,
            "mask_temperature",
            "a positive number",
            self.mask_temperature,
        )


MethodSettings = AdaMergingSettings | AdaMergingCartSettings | AdaRankSettings

SETTINGS_CLASSES: dict[str, type[MethodSettings]] = {
    cls.method: cls for cls in (AdaMergingSettings, AdaMergingCartSettings, AdaRankSettings)
}
# One `adapt_eval` job each instead of a `merge_eval` sweep.
ADAPTIVE_METHODS = tuple(SETTINGS_CLASSES)


def is_adaptive(entry: str) -> bool:
    return base_method(entry) in SETTINGS_CLASSES


def settings_to_json(settings: MethodSettings) -> dict[str, Any]:
    return {"method": settings.method, **dataclasses.asdict(settings)}


def settings_from_json(obj: Mapping[str, Any], source: str) -> MethodSettings:
    """The settings recorded by `settings_to_json`; InputError naming `source` if they are not such settings."""
    if not isinstance(obj, Mapping):
        raise InputError(f"{source}: settings must be a JSON object, got {type(obj).__name__}")
    values = dict(obj)
    method = values.pop("method", None)
    cls = SETTINGS_CLASSES.get(method) if isinstance(method, str) else None
    if cls is None:
        raise InputError(f"{source}: unknown adaptive method {method!r}; expected one of {sorted(SETTINGS_CLASSES)}")
    # JSON has no tuples: betas and clamp come back as lists.
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    try:
        return cls(**values)
    except TypeError as err:
        raise InputError(f"{source}: settings do not fit {method} ({err})") from None


# A config value "selected" takes CART's val-selected setting: adamerging_cart's rank and lam, adarank's
# initial_rank and prior (with base cart).
SELECTED = "selected"
FROM_CART = {"rank": "rank", "lam": "lam", "initial_rank": "rank", "prior": "lam"}


def method_settings(entry: str, values: Mapping[str, Any], cart: Mapping[str, float] | None) -> MethodSettings:
    """The settings of a config entry (`adamerging`, `adarank@ta`, ...): its values, "selected" resolved."""
    name = base_method(entry)
    if name not in SETTINGS_CLASSES:
        raise InputError(f"methods.{entry}: not an adaptive method; expected one of {list(ADAPTIVE_METHODS)}")
    resolved: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, list) and key not in ("betas", "clamp"):
            raise InputError(f"methods.{entry}.{key}: adaptive methods take one value, not a grid; got {value!r}")
        if value == SELECTED:
            if key not in FROM_CART:
                raise InputError(f"methods.{entry}.{key}: 'selected' applies only to {sorted(FROM_CART)}")
            if cart is None:
                raise InputError(f"methods.{entry}.{key}: 'selected' needs the cart method in the same config")
            value = cart[FROM_CART[key]]
        resolved[key] = tuple(value) if isinstance(value, list) else value
    cls = SETTINGS_CLASSES[name]
    hints = {key: hint for key, hint in typing.get_type_hints(cls).items() if typing.get_origin(hint) is not ClassVar}
    for key, value in resolved.items():
        if key not in hints:
            raise InputError(f"methods.{entry}: unknown setting {key!r}; {name} accepts: {', '.join(hints)}")
        if not _fits(value, hints[key]):
            raise InputError(f"methods.{entry}.{key}: expected {_type_name(hints[key])}, got {value!r}")
    missing = [field.name for field in dataclasses.fields(cls) if field.name not in resolved and _required(field)]
    if missing:
        raise InputError(f"methods.{entry}: missing setting(s) {missing}, required by {name}")
    try:
        return cls(**resolved)
    except InputError as err:
        message = str(err).removeprefix(f"{name}: ")
        raise InputError(f"methods.{entry}: {message}") from None


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value has the type a settings field declares (bool is not a number here)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is tuple:
        return isinstance(value, tuple) and len(value) == len(args) and all(map(_fits, value, args))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "null").replace("<class '", "").replace("'>", "")


def non_default_settings(entry: str, setting: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded settings (JSON values) of an adaptive entry that differ from its method's defaults.

    What a table shows for the row: where the method started (required settings) and what the config changed.
    """
    cls = SETTINGS_CLASSES[base_method(entry)]
    defaults = {field.name: field.default for field in dataclasses.fields(cls) if not _required(field)}
    return {
        key: value
        for key, value in setting.items()
        if key not in defaults or json.dumps(defaults[key]) != json.dumps(value)
    }


def describe_settings(cls: type[MethodSettings]) -> list[str]:
    """`mergeflow methods`' lines for one adaptive method: its summary, then every setting with its default."""
    summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    hints = typing.get_type_hints(cls)
    lines = [f"{cls.method} ({cls.display}; test-time adaptation on unlabeled test images): {summary}"]
    for item in dataclasses.fields(cls):
        default = "required" if _required(item) else f"default {json.dumps(item.default)}"
        lines.append(
            f"    {item.name} ({_readable_type(hints[item.name])}, {default}): {item.metadata.get('help', '')}"
        )
    return lines


def _readable_type(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_readable_type(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is tuple:
        return "[" + ", ".join(_readable_type(arg) for arg in args) + "]"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
