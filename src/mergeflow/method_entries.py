"""Config method entries (`cart`, or a variant `cart@released`) and the SVD factors each one reuses.

Torch-free on purpose: the workflow imports it while building the DAG, in every Snakemake start-up.
"""

from __future__ import annotations

FACTOR_KIND = {"cart": "centered", "lowrank_ta": "original", "tsv_m": "original"}
"""Methods whose sweeps reuse SVD factors, and which task vectors they decompose
(centered θ_t − θ_avg or original θ_t − θ_0)."""

VARIANT_SEPARATOR = "@"

# Test-time adaptive methods (`mergeflow.adaptive`): one `adapt_eval` job each instead of a `merge_eval` sweep.
ADAPTIVE_METHODS = ("adamerging", "adamerging_cart", "adarank")


def base_method(entry: str) -> str:
    """The registry method of a config entry: `cart@released` is a second, separately reported cart grid."""
    return entry.split(VARIANT_SEPARATOR, 1)[0]


def factor_kind(entry: str) -> str | None:
    return FACTOR_KIND.get(base_method(entry))


def is_adaptive(entry: str) -> bool:
    return base_method(entry) in ADAPTIVE_METHODS
