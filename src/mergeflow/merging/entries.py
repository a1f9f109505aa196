"""Config method entries (`cart`, a variant `cart@released`, a modified merge `cart+svc`), their grids, and the SVD
factors each reuses.

Torch-free on purpose: the workflow imports it while building the DAG, in every Snakemake start-up.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from mergeflow.merging.registry import METHODS, MODIFIER_SEPARATOR, MODIFIERS, modifiable

VARIANT_SEPARATOR = "@"
VARIANT_PATTERN = "[A-Za-z0-9_-]+"


def merge_name(entry: str) -> str:
    """What a config entry merges with: `cart+svc@strong` → `cart+svc` (the variant only names a second grid)."""
    return entry.split(VARIANT_SEPARATOR, 1)[0]


def base_method(entry: str) -> str:
    """The registry method of a config entry: `cart@released` is a second, separately reported cart grid, and
    `cart+svc` is cart's merge with a modifier applied."""
    return merge_name(entry).split(MODIFIER_SEPARATOR, 1)[0]


def entry_modifiers(entry: str) -> tuple[str, ...]:
    """The modifiers a config entry applies after its method (`cart+svc` → ("svc",))."""
    return tuple(merge_name(entry).split(MODIFIER_SEPARATOR)[1:])


def entry_pattern(methods: Sequence[str]) -> str:
    """The regular expression a config entry matches: one of `methods`, then for a static method that takes them
    `+<modifier>`s, then optionally `@<variant>`."""
    modifiable_methods = [name for name in methods if name in METHODS and modifiable(METHODS[name])]
    plain = "|".join(methods)
    modified = f"({'|'.join(modifiable_methods)})(\\{MODIFIER_SEPARATOR}({'|'.join(MODIFIERS)}))+"
    return f"^({modified}|{plain})({VARIANT_SEPARATOR}{VARIANT_PATTERN})?$"


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
