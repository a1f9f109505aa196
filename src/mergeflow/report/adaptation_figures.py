"""Where test-time adaptation moved weight: the learned coefficient per block and task, and AdaRank's kept rank.

Both read a learned-merge file (`mergeflow.adaptive.save_learned_merge`). Tensors are grouped by residual
block (`transformer.resblocks.<i>.`); every other tensor (embeddings, ln_pre, ln_post, proj) forms the
group "other". A cell is the mean over the group's tensors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from mergeflow.adaptive.artefact import LearnedMerge
from mergeflow.evaluation.results import PathLike
from mergeflow.io import InputError
from mergeflow.report.style import figure_style, heading, save_figure
from mergeflow.report.tables import display_name

_BLOCK = re.compile(r"(?:^|\.)resblocks\.(\d+)\.")
OTHER = "other"
COLORMAP = "cividis"


def block_of(key: str) -> str:
    """`transformer.resblocks.3.mlp.c_fc.weight` → `3`; tensors outside the residual blocks → `other`."""
    match = _BLOCK.search(key)
    return match.group(1) if match else OTHER


def _ordered_groups(groups: Sequence[str]) -> list[str]:
    blocks = sorted({g for g in groups if g != OTHER}, key=int)
    return blocks + ([OTHER] if OTHER in groups else [])


def _checked_tasks(rows: int, tasks: Sequence[str], source: str) -> list[str]:
    if rows != len(tasks):
        raise InputError(f"{source}: {rows} tasks learned, but {len(tasks)} task names given ({', '.join(tasks)})")
    return list(tasks)


def coefficient_grid(learned: LearnedMerge, tasks: Sequence[str], source: str) -> pd.DataFrame:
    """Mean learned coefficient per task (rows) and block (columns); task-wise methods have one column."""
    names = _checked_tasks(int(learned.coefficients.shape[0]), tasks, source)
    if learned.coefficients.shape[1] == 1:
        return pd.DataFrame(learned.coefficients.numpy(), index=names, columns=["all tensors"])
    by_group: dict[str, list[int]] = {}
    for key, column in learned.columns.items():
        by_group.setdefault(block_of(key), []).append(column)
    values = learned.coefficients.double().numpy()
    grid = {group: values[:, sorted(set(columns))].mean(axis=1) for group, columns in by_group.items()}
    return pd.DataFrame(grid, index=names)[_ordered_groups(list(grid))]


def kept_rank_grid(learned: LearnedMerge, tasks: Sequence[str], source: str) -> pd.DataFrame:
    """AdaRank: percent of singular components kept per task (rows) and block (columns)."""
    if not learned.masks:
        raise InputError(f"{source}: no singular-component masks; expected an adarank learned-merge file")
    names = _checked_tasks(int(next(iter(learned.masks.values())).shape[0]), tasks, source)
    by_group: dict[str, list[pd.Series]] = {}
    for key, mask in learned.masks.items():
        kept = pd.Series(100.0 * mask.double().mean(dim=1).numpy(), index=names)
        by_group.setdefault(block_of(key), []).append(kept)
    grid = {group: pd.concat(series, axis=1).mean(axis=1) for group, series in by_group.items()}
    return pd.DataFrame(grid, index=names)[_ordered_groups(list(grid))]


def _heatmap(grid: pd.DataFrame, out_stem: PathLike, label: str, fmt: str, title: str) -> list[Path]:
    with figure_style():
        figure = Figure(figsize=(max(4.5, 1.8 + 0.55 * grid.shape[1]), 1.4 + 0.32 * grid.shape[0]),
                        layout="constrained")  # fmt: skip
        axes = figure.add_subplot()
        sns.heatmap(grid, ax=axes, cmap=COLORMAP, annot=grid.shape[1] <= 16, fmt=fmt, annot_kws={"fontsize": 7},
                    linewidths=0.5, linecolor="white", cbar_kws={"label": label, "shrink": 0.9})  # fmt: skip
        axes.grid(False)
        axes.set_xlabel("residual block (other: embeddings, layer norms outside blocks, projection)")
        axes.set_ylabel("task")
        axes.tick_params(axis="y", rotation=0)
        axes.set_title(title)
        return save_figure(figure, out_stem)


def plot_coefficients(
    learned: LearnedMerge, tasks: Sequence[str], out_stem: PathLike, source: str, title: str | None = None
) -> list[Path]:
    """Write `out_stem`.png/.pdf: the learned coefficient per block and task."""
    method = learned.settings.method
    text = f"{display_name(method)}: learned coefficient per block and task (mean over the block's tensors)"
    grid = coefficient_grid(learned, tasks, source)
    return _heatmap(grid, out_stem, "coefficient", ".2f", heading(text, title))


def plot_kept_rank(
    learned: LearnedMerge, tasks: Sequence[str], out_stem: PathLike, source: str, title: str | None = None
) -> list[Path]:
    """Write `out_stem`.png/.pdf: AdaRank's kept singular components (%) per block and task."""
    grid = kept_rank_grid(learned, tasks, source)
    text = "AdaRank: singular components kept (%) per block and task (mean over the block's CART matrices)"
    return _heatmap(grid, out_stem, "components kept (%)", ".0f", heading(text, title))
