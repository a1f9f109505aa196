"""Hyper-parameter grids and validation-based selection of merged models."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

SWEEP_AXIS = "rank"


def setting_key(setting: Mapping[str, Any]) -> str:
    """Canonical JSON of a setting: identical settings give identical strings."""
    return json.dumps({k: setting[k] for k in sorted(setting)}, sort_keys=True)


def average_normalized(val_rows: pd.DataFrame) -> pd.Series:
    """Mean normalized val accuracy per setting, in first-appearance (grid) order."""
    return val_rows.groupby("setting", sort=False)["normalized_accuracy"].mean()


def best_setting(val_rows: pd.DataFrame) -> str:
    """The setting with the highest average normalized val accuracy; ties go to the earliest in the grid."""
    scores = average_normalized(val_rows)
    return str(scores.index[int(scores.to_numpy().argmax())])


def best_setting_per_sweep(val_rows: pd.DataFrame, axis: str | None) -> dict[Any, str]:
    """For each value of the sweep axis, the val-best setting at that value (all others selected on val)."""
    if axis is None or axis not in val_rows or val_rows[axis].isna().all():
        return {None: best_setting(val_rows)}
    return {value: best_setting(group) for value, group in val_rows.groupby(axis, sort=False)}


def selected_settings(val_rows: pd.DataFrame, axis: str | None) -> tuple[str, set[str]]:
    """(overall best setting, settings best at some value of the sweep axis)."""
    return best_setting(val_rows), set(best_setting_per_sweep(val_rows, axis).values())


def sweep_axis_of(grid: Mapping[str, Any]) -> str | None:
    """Rank is reported along the x-axis of the rank-sweep figure; every other hyper-parameter is selected."""
    return SWEEP_AXIS if SWEEP_AXIS in grid else None


def as_rows(
    method: str,
    setting: Mapping[str, Any],
    split: str,
    accuracies: Mapping[str, float],
    reference: Mapping[str, float],
) -> list[dict[str, Any]]:
    """One row per task; normalized accuracy divides by the individual model's accuracy on the same split."""
    key = setting_key(setting)
    return [
        {
            "method": method,
            "setting": key,
            "rank": float(setting[SWEEP_AXIS]) if SWEEP_AXIS in setting else float("nan"),
            "lam": float(setting["lam"]) if "lam" in setting else float("nan"),
            "split": split,
            "task": task,
            "accuracy": accuracy,
            "normalized_accuracy": accuracy / reference[task] if reference[task] > 0 else float("nan"),
        }
        for task, accuracy in accuracies.items()
    ]


def mark_selection(rows: pd.DataFrame, best: str, best_at_sweep: set[str]) -> pd.DataFrame:
    marked = rows.copy()
    marked["best"] = marked["setting"] == best
    marked["best_at_sweep"] = marked["setting"].isin(best_at_sweep)
    return marked
