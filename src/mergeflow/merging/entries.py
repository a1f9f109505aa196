"""Config method entries (`cart`, or a variant `cart@released`) and the SVD factors each one reuses.

Torch-free on purpose: the workflow imports it while building the DAG, in every Snakemake start-up.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

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


def expand_grid(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product of the list-valued entries (in key order); scalars are held fixed.

    `{"rank": [0, 0.5], "lam": [1, 2]}` → 4 settings, rank varying slowest.
    """
    keys = list(grid)
    values = [list(v) if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
    for key, options in zip(keys, values):
        if not options:
            raise ValueError(f"hyper-parameter {key!r} has an empty list of values")
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
