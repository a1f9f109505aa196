"""Config method entries (`cart`, or a variant `cart@released`), their grids, and the SVD factors each reuses.

Torch-free on purpose: the workflow imports it while building the DAG, in every Snakemake start-up.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from mergeflow.merging.registry import METHODS

VARIANT_SEPARATOR = "@"
VARIANT_PATTERN = "[A-Za-z0-9_-]+"


def base_method(entry: str) -> str:
    """The registry method of a config entry: `cart@released` is a second, separately reported cart grid."""
    return entry.split(VARIANT_SEPARATOR, 1)[0]


def entry_pattern(methods: Sequence[str]) -> str:
    """The regular expression a config entry of one of `methods` matches: a name, optionally `@<variant>`."""
    return f"^({'|'.join(methods)})({VARIANT_SEPARATOR}{VARIANT_PATTERN})?$"


def factor_kind(entry: str) -> str | None:
    """The task factors a static method's sweep reuses (its registry entry's `factors`); None for the others."""
    method = METHODS.get(base_method(entry))
    return method.factors if method is not None else None


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
