"""One adaptive evaluation job: settings from the config, adaptation on unlabeled test images, val and test rows.

The rows have the columns of a static method's sweep (`mergeflow.evaluation.sweep`), one setting marked best, so
tables and figures read them alike. Test labels are read only after adaptation, to measure accuracy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from mergeflow.adaptive.adaptation import AdaptationResult, adapt
from mergeflow.adaptive.data import UnlabeledTask
from mergeflow.adaptive.settings import MethodSettings, settings_to_json
from mergeflow.evaluation.selection import as_rows, best_setting, mark_selection, setting_key
from mergeflow.evaluation.sweep import EVAL_SPLITS, SweepEvaluator
from mergeflow.io import InputError
from mergeflow.types import StateDict

log = logging.getLogger(__name__)


def cart_selection(cart_rows: pd.DataFrame, source: str) -> dict[str, float]:
    """CART's val-selected rank and lam among ranks above 0, from its merge_eval CSV.

    Rank 0 is weight averaging, with no low-rank term left to weight, so when CART's own selection is
    rank 0 this is the best setting on val among the others (by the same average normalized accuracy).
    """
    val = cart_rows[(cart_rows["split"] == "val") & (cart_rows["rank"] > 0)]
    if val.empty:
        raise InputError(f"{source}: no val rows at a rank above 0; expected cart's merge_eval output")
    chosen = val[val["setting"] == best_setting(val)]
    return {"rank": float(chosen["rank"].iloc[0]), "lam": float(chosen["lam"].iloc[0])}


def adapt_and_evaluate(
    entry: str,
    settings: MethodSettings,
    evaluator: SweepEvaluator,
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    unlabeled: Sequence[UnlabeledTask],
    reference: Mapping[str, Mapping[str, float]],
    device: torch.device,
    *,
    progress: bool = True,
) -> tuple[pd.DataFrame, AdaptationResult]:
    """Adapt (no labels), load the adapted encoder into the evaluator, and return its val and test rows."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
    result = adapt(evaluator.visual, evaluator.spec, pretrained, finetuned, unlabeled, settings, device,
                   progress=progress)  # fmt: skip
    if device.type == "cuda":
        log.info("%s: peak device memory during adaptation %.3f GiB, %.3f GiB of it held before (encoder, staged "
                 "images)", entry, torch.cuda.max_memory_allocated(device) / 2**30, held / 2**30)  # fmt: skip
    evaluator.load_state_dict(result.merged_state_dict(), f"{entry}: adapted merge")
    setting = {key: value for key, value in settings_to_json(settings).items() if key != "method"}
    rows = [
        row
        for split in EVAL_SPLITS
        for row in as_rows(entry, setting, split, evaluator.accuracies(split), reference[split])
    ]
    key = setting_key(setting)
    return mark_selection(pd.DataFrame(rows), key, {key}), result
