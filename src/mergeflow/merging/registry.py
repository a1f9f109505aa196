"""The method registry: names, typed hyper-parameters with defaults and ranges, and how each method runs."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mergeflow.io import InputError
from mergeflow.merging.hparams import Choice, Flag, HParam, HParamValueError, Integer, Real, RealOrPerTask

if TYPE_CHECKING:
    from mergeflow.merging.context import TensorContext, TensorDirection

# (source, hparams, placement, progress), and the task statistics for a method that reads them.
Statistics = Callable[..., Any]

# What a method needs besides θ_0 and the experts; the tables group methods by it.
Needs = Literal["nothing", "training_data", "task_at_inference"]
NEEDS_GROUPS: dict[str, str] = {
    "nothing": "data-free",
    "training_data": "needs training data",
    "task_at_inference": "needs the task at inference",
}


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
    `needs` is what the method reads besides the models: "training_data" methods read `task_statistics`
    (one cached file per fine-tuned model, from its task's training images: "grams" or "fisher"), or the
    training images themselves at merge time when `task_statistics` is None; a "task_at_inference" method
    builds one model per task, chosen by its `task` hyper-parameter.
    """

    name: str
    display: str  # in tables and figures
    summary: str
    params: tuple[HParam, ...]
    # None for a method that merges through the models on training images (the evaluation sweep runs it)
    direction: Callable[[TensorContext], TensorDirection] | None
    statistics: Statistics | None = None
    factors: Literal["centered", "original"] | None = None
    needs: Needs = "nothing"
    task_statistics: Literal["grams", "fisher"] | None = None

    @property
    def group(self) -> str:
        """The tables' group of the method: what it assumes besides θ_0 and the experts."""
        return NEEDS_GROUPS[self.needs]

    @property
    def reads_training_images(self) -> bool:
        """True for a method that runs the models on training images while it merges (RegMean++)."""
        return self.needs == "training_data" and self.task_statistics is None

    def param(self, key: str) -> HParam | None:
        return next((param for param in self.params if param.name == key), None)


def _lam(default: float) -> Real:
    return Real("lam", default, "scaling λ of the merged direction (origin + λ·delta)")


def _rank() -> Real:
    summary = "rank ratio ρ: k = max(1, floor(ρ·min(m, n))), 0 = no low-rank term, 1 = full rank"
    return Real("rank", 0.08, summary, 0.0, 1.0)


def _ratio() -> Real:
    summary = "α: G' = α G + (1 − α) diag(G), shrinking each Gram's off-diagonal entries (the authors' name)"
    return Real("reduce_non_diagonal_ratio", 0.95, summary, 0.0, 1.0)


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
        MergeMethod(
            "regmean",
            "RegMean",
            "each linear layer's weight fits every expert's outputs on its own task's inputs: "
            "(Σ_t G_t)⁻¹ Σ_t G_t W_tᵀ with G_t the expert's input Gram matrix on training images; other tensors θ_avg",
            (_ratio(),),
            _rule("regmean", "regmean"),
            needs="training_data",
            task_statistics="grams",
        ),
        MergeMethod(
            "regmean_plusplus",
            "RegMean++",
            "RegMean block by block, each block's input Grams taken through the blocks merged so far "
            "(the training images run through the models while merging)",
            (_ratio(),),
            None,
            needs="training_data",
        ),
        MergeMethod(
            "fisher",
            "Fisher merging",
            "per coordinate, the experts averaged with weights c_t (F_t + ε), F_t each expert's diagonal Fisher "
            "on its task's training images (FusionBench's estimator)",
            (
                Real("minimal_fisher_weight", 1e-6, "ε added to every Fisher entry", 0.0),
                Flag("normalize_fisher_weight", True, "scale c_t by 1/‖F_t‖ over the model, normalised over tasks"),
                RealOrPerTask("fisher_scaling_coefficients", 1.0, "c_t: one number (equal, 1/T each) or one per task"),
            ),
            _rule("fisher", "fisher"),
            statistics=_rule("fisher", "fisher_statistics"),
            needs="training_data",
            task_statistics="fisher",
        ),
        MergeMethod(
            "emr",
            "EMR",
            "one model per task: elected unified vector τ_uni, then θ_0 + λ_t · (mask_t ⊙ τ_uni) for task t, "
            "mask_t where τ_t agrees in sign, λ_t rescaling the mean magnitudes (the task is known at inference)",
            (Integer("task", 0, "index of the task whose model is built (a sweep builds every task's own)"),),
            _rule("emr", "emr"),
            statistics=_rule("emr", "emr_statistics"),
            needs="task_at_inference",
        ),
    )
}


@dataclass(frozen=True)
class MergeModifier:
    """A correction applied to the result of any static merge, written `<method>+<modifier>` (`cart+svc`).

    Its hyper-parameters join the method's in the same grid.
    """

    name: str
    display: str
    summary: str
    params: tuple[HParam, ...]


MODIFIER_SEPARATOR = "+"

MODIFIERS: dict[str, MergeModifier] = {
    modifier.name: modifier
    for modifier in (
        MergeModifier(
            "svc",
            "SVC",
            "singular value calibration (arXiv 2602.05536): every 2-D tensor's merged update θ − θ_0 keeps its "
            "singular vectors, and each singular value is scaled by γ_r = T / Σ_t max(α, s_r^t), s_r^t how much "
            "the merge over-counts task t along the r-th direction",
            (
                Real(
                    "alpha",
                    0.1,
                    "calibration strength α: the floor of each task's projection coefficient",
                    0.0,
                    low_open=True,
                ),
            ),  # fmt: skip
        ),
    )
}


def modifiable(method: MergeMethod) -> bool:
    """Whether a modifier applies: a merge that changes θ_0 and gives one model for all tasks."""
    return method.name != "zeroshot" and method.needs != "task_at_inference" and not method.reads_training_images


def merge_spec(name: str) -> tuple[MergeMethod, tuple[MergeModifier, ...]]:
    """The method and modifiers of `name` (`cart`, `cart+svc`); InputError naming what is valid otherwise."""
    method_name, *modifier_names = name.split(MODIFIER_SEPARATOR)
    method = METHODS.get(method_name)
    if method is None:
        raise InputError(f"unknown merge method {method_name!r}; valid methods: {', '.join(METHODS)}")
    modifiers = []
    for modifier_name in modifier_names:
        modifier = MODIFIERS.get(modifier_name)
        if modifier is None:
            raise InputError(f"{name}: unknown modifier {modifier_name!r}; valid modifiers: {', '.join(MODIFIERS)}")
        if not modifiable(method):
            raise InputError(f"{name}: {method_name} cannot take a modifier (it gives no single merged model)")
        modifiers.append(modifier)
    if len(set(modifier_names)) != len(modifier_names):
        raise InputError(f"{name}: a modifier is named twice")
    return method, tuple(modifiers)


def get_method(name: str) -> MergeMethod:
    """The registered method called `name`; InputError listing the valid names otherwise."""
    method = METHODS.get(name)
    if method is None:
        raise InputError(f"unknown merge method {name!r}; valid methods: {', '.join(METHODS)}")
    return method


def resolve_hparams(name: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyper-parameter of `name` (a method, or a method with modifiers: `cart+svc`), typed and checked,
    defaults filled in, the method's in declaration order and then each modifier's.

    Values may be strings from the command line ("0.3", "mean", "0.4,0.5") or typed values from YAML.
    """
    method, modifiers = merge_spec(name)
    params = [*method.params, *(param for modifier in modifiers for param in modifier.params)]
    known = {param.name for param in params}
    unknown = [key for key in raw if key not in known]
    if unknown:
        accepted = ", ".join(param.name for param in params) or "none"
        raise InputError(f"{name}: unknown hyper-parameter {unknown[0]!r}; {name} accepts: {accepted}")
    resolved: dict[str, Any] = {}
    for param in params:
        if param.name not in raw:
            resolved[param.name] = param.default
            continue
        try:
            resolved[param.name] = param.parse(raw[param.name])
        except HParamValueError as err:
            raise InputError(f"{name}: hyper-parameter {param.name!r}: {err} (allowed: {param.allowed})") from None
    return resolved
