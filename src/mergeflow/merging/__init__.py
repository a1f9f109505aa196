"""The merging engine: every method of METHODS.md, in memory or streamed from safetensors files.

    merged = merge_state_dicts("cart", pretrained, finetuned, {"rank": 0.08, "lam": 1.0})
    merge_files("ties", "pre.safetensors", ["a.safetensors", "b.safetensors"], {"k": "0.2"}, "out.safetensors")
"""

from mergeflow.merging.engine import MergeDirection, merge_direction, merge_state_dicts
from mergeflow.merging.factors import TaskFactors, compute_task_factors, load_task_factors, save_task_factors
from mergeflow.merging.keys import is_cart_matrix
from mergeflow.merging.registry import METHODS, MergeMethod, get_method, resolve_hparams
from mergeflow.merging.spectral import rank_from_ratio
from mergeflow.merging.streaming import MergeSummary, merge_files

__all__ = [
    "METHODS",
    "MergeDirection",
    "MergeMethod",
    "MergeSummary",
    "TaskFactors",
    "compute_task_factors",
    "get_method",
    "is_cart_matrix",
    "load_task_factors",
    "merge_direction",
    "merge_files",
    "merge_state_dicts",
    "rank_from_ratio",
    "resolve_hparams",
    "save_task_factors",
]
