"""The merging engine: every method of docs/methods.md, in memory or streamed from safetensors files.

    merged = merge_state_dicts("cart", pretrained, finetuned, {"rank": 0.08, "lam": 1.0})
    merge_files("ties", "pre.safetensors", ["a.safetensors", "b.safetensors"], {"k": "0.2"}, "out.safetensors")

Names are resolved on first use (`mergeflow.lazy`), so importing a submodule such as the CLI does not pull in
torch: every `mergeflow` verb builds the full parser, and the torch-free ones should start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeflow.lazy import lazy_exports

_EXPORTS = {
    "MergeDirection": "engine",
    "merge_direction": "engine",
    "merge_state_dicts": "engine",
    "TaskFactors": "factors",
    "compute_task_factors": "factors",
    "load_task_factors": "factors",
    "save_task_factors": "factors",
    "is_cart_matrix": "keys",
    "METHODS": "registry",
    "MergeMethod": "registry",
    "get_method": "registry",
    "resolve_hparams": "registry",
    "rank_from_ratio": "spectral",
    "MergeSummary": "streaming",
    "merge_files": "streaming",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from mergeflow.merging.engine import MergeDirection, merge_direction, merge_state_dicts
    from mergeflow.merging.factors import TaskFactors, compute_task_factors, load_task_factors, save_task_factors
    from mergeflow.merging.keys import is_cart_matrix
    from mergeflow.merging.registry import METHODS, MergeMethod, get_method, resolve_hparams
    from mergeflow.merging.spectral import rank_from_ratio
    from mergeflow.merging.streaming import MergeSummary, merge_files


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
