"""The method registry: names, typed hyper-parameters with defaults and ranges, and how each method runs."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mergeflow.io import InputError
from mergeflow.merging.hparams import Choice, HParam, HParamValueError, Integer, Real, RealOrPerTask

if TYPE_CHECKING:
    from mergeflow.merging.context import Placement, TensorContext, TensorDirection
    from mergeflow.merging.sources import TensorSource

Statistics = Callable[["TensorSource", Mapping[str, Any], "Placement", bool], Any]


def _rule(module: str, name: str) -> Callable[..., Any]:
    """`mergeflow.merging.methods.<module>.<name>`, imported at its first call.

    The registry's names and hyper-parameters are then readable without torch: the workflow checks every
    config grid point against them before any job starts, and Snakemake's start-up stays fast.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(f"mergeflow.merging.methods.{module}"), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


@dataclass(frozen=True)
class MergeMethod:
    """A merge method: its per-tensor rule, its hyper-parameters and what else it needs.

    `statistics` is a whole-model pass run before the per-tensor rule (TIES thresholds);
    `factors` says which cached task factors the method's sweep reuses ("centered" τ̄_t = θ_t − θ_avg or
    "original" τ_t = θ_t − θ_0): the workflow then runs one `decompose` job for every rank of the sweep.
    """

    name: str
    display: str  # in tables and figures
    summary: str
    params: tuple[HParam, ...]
    direction: Callable[[TensorContext], TensorDirection]
    statistics: Statistics | None = None
    factors: Literal["centered", "original"] | None = None

    def param(self, key: str) -> HParam | None:
        return next((param for param in self.params if param.name == key), None)


def _lam(default: float) -> Real:
    return Real("lam", default, "scaling λ of the merged direction (origin + λ·delta)")


def _rank() -> Real:
    summary = "rank ratio ρ: k = max(1, floor(ρ·min(m, n))), 0 = no low-rank term, 1 = full rank"
    return Real("rank", 0.08, summary, 0.0, 1.0)


_BASES = ("task_arithmetic", "ties")

METHODS: dict[str, MergeMethod] = {
    method.name: method
    for method in (
        MergeMethod(
            "zeroshot", "zero-shot merge", "the pretrained encoder θ_0, untouched", (), _rule("averaging", "zeroshot")
        ),
        MergeMethod(
            "weight_averaging",
            "weight averaging",
            "θ_avg, the mean of the fine-tuned encoders",
            (),
            _rule("averaging", "weight_averaging"),
        ),
        MergeMethod(
            "task_arithmetic", "task arithmetic", "θ_0 + λ Σ τ_t", (_lam(0.3),), _rule("averaging", "task_arithmetic")
        ),
        MergeMethod(
            "ties",
            "TIES",
            "trim each τ_t to its top-k fraction, elect signs, merge agreeing entries",
            (
                Real("k", 0.2, "fraction of each task vector's entries kept (largest |τ_t| of the model)", 0.0, 1.0),
                _lam(1.0),
                Choice("merge", "mean", "how agreeing entries are combined", ("mean", "sum")),
            ),
            _rule("ties", "ties"),
            statistics=_rule("ties", "ties_method_statistics"),
        ),
        MergeMethod(
            "dare",
            "DARE",
            "randomly drop a fraction p of every 2-D task-vector entry, rescale by 1/(1-p), then the base",
            (
                Real("p", 0.5, "drop probability", 0.0, 1.0, high_open=True),
                _lam(0.3),
                Choice("base", "task_arithmetic", "method applied to the rescaled task vectors", _BASES),
                Integer("seed", 0, "seed of the drop masks (mixed with task index and key)"),
            ),
            _rule("dare", "dare"),
            statistics=_rule("dare", "dare_statistics"),
        ),
        MergeMethod(
            "magmax",
            "MagMax",
            "per coordinate the task-vector entry of largest magnitude",
            (_lam(1.0),),
            _rule("averaging", "magmax"),
        ),
        MergeMethod(
            "consensus",
            "consensus",
            "keep coordinates that at least k tasks' TALL masks select, applied to the base vector",
            (
                Integer("k", 2, "minimum number of tasks whose mask selects a coordinate"),
                RealOrPerTask("mask_lam", 0.4, "TALL mask threshold λ_t, one value or one per task"),
                _lam(0.3),
                Choice("base", "task_arithmetic", "task vector that the consensus mask is applied to", _BASES),
            ),
            _rule("consensus", "consensus"),
            statistics=_rule("consensus", "consensus_statistics"),
        ),
        MergeMethod(
            "tsv_m",
            "TSV-M",
            "task singular vectors: top r/T triplets per task, orthogonalised, on every 2-D tensor",
            (_lam(1.0),),
            _rule("singular", "tsv_m"),
            factors="original",
        ),
        MergeMethod(
            "iso_c",
            "Iso-C",
            "flatten the spectrum of Σ τ_t to its mean on every 2-D tensor",
            (_lam(1.0),),
            _rule("singular", "iso_c"),
        ),
        MergeMethod(
            "iso_cts",
            "Iso-CTS",
            "iso_c on a common subspace plus task-specific directions, on every 2-D tensor",
            (
                _lam(1.0),
                Real("common_fraction", 0.8, "fraction of the spectrum given to the common subspace", 0.0, 1.0),
            ),
            _rule("singular", "iso_cts"),
        ),
        MergeMethod(
            "lowrank_ta",
            "low-rank TA",
            "task arithmetic with rank-k task vectors on the residual blocks' attention/MLP matrices",
            (_rank(), _lam(0.3)),
            _rule("lowrank", "lowrank_ta"),
            factors="original",
        ),
        MergeMethod(
            "cart",
            "CART",
            "CART: θ_avg + λ Σ rank-k centered task vectors on the residual blocks' attention/MLP matrices",
            (_rank(), _lam(1.0)),
            _rule("lowrank", "cart"),
            factors="centered",
        ),
        MergeMethod(
            "wudi",
            "WUDI",
            "data-free: Adam on Σ_t ‖(τ − τ_t) τ_tᵀ‖²/‖τ_t‖² from Σ_t τ_t, per residual-block attention/MLP matrix; "
            "every other tensor θ_0 (as the authors' code)",
            (
                Integer("iterations", 300, "Adam steps per matrix (the authors' --iter)"),
                Real("lr", 1e-5, "Adam learning rate", 0.0),
                _lam(1.0),
            ),
            _rule("wudi", "wudi"),
        ),
    )
}


def get_method(name: str) -> MergeMethod:
    """The registered method called `name`; InputError listing the valid names otherwise."""
    method = METHODS.get(name)
    if method is None:
        raise InputError(f"unknown merge method {name!r}; valid methods: {', '.join(METHODS)}")
    return method


def resolve_hparams(name: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyper-parameter of method `name`, typed and checked, defaults filled in, in declaration order.

    Values may be strings from the command line ("0.3", "mean", "0.4,0.5") or typed values from YAML.
    """
    method = get_method(name)
    unknown = [key for key in raw if method.param(key) is None]
    if unknown:
        accepted = ", ".join(param.name for param in method.params) or "none"
        raise InputError(f"{name}: unknown hyper-parameter {unknown[0]!r}; {name} accepts: {accepted}")
    resolved: dict[str, Any] = {}
    for param in method.params:
        if param.name not in raw:
            resolved[param.name] = param.default
            continue
        try:
            resolved[param.name] = param.parse(raw[param.name])
        except HParamValueError as err:
            raise InputError(f"{name}: hyper-parameter {param.name!r}: {err} (allowed: {param.allowed})") from None
    return resolved
