"""The λ × rank heatmap: average validation accuracy of every (rank ratio, λ) setting of a rank-sweep method.

It shows the grid the selection protocol searched: the outlined cell is the setting selected on val (by
average normalized accuracy, so it need not be the cell with the highest absolute accuracy), and the
bold numbers are the λ selected at each rank (the points of the rank-sweep figure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mergeflow.evaluation.results import PathLike, source_of
from mergeflow.io import InputError
from mergeflow.report.style import figure_style, heading, save_figure
from mergeflow.report.tables import display_name

# cividis: perceptually uniform, readable with colour-vision deficiencies, monotone in lightness (grayscale).
COLORMAP = "cividis"
MIN_WIDTH_INCHES = 5.0


@dataclass(frozen=True)
class LambdaRankGrid:
    method: str
    accuracy: pd.DataFrame  # percent; index: rank ratio (ascending), columns: λ (ascending); NaN = not run
    selected: tuple[float, float]  # (rank, λ) of the val-selected setting
    selected_per_rank: tuple[tuple[float, float], ...]  # (rank, λ) chosen at each rank


def lambda_rank_grid(results: pd.DataFrame, method: str, tasks: Sequence[str]) -> LambdaRankGrid:
    """Average val accuracy (%) over `tasks` of every setting of `method`, arranged by rank ratio and λ."""
    source = source_of(results, method) if (results["method"] == method).any() else f"method {method}"
    val = results[(results["method"] == method) & (results["split"] == "val")]
    if val.empty:
        raise InputError(f"{source}: no val rows for {method}; expected its whole grid evaluated on val")
    if val["rank"].isna().any() or val["lam"].isna().any():
        raise InputError(f"{source}: val rows without a rank or lam; expected a rank x lam grid")
    averages = {}
    for setting, group in val.groupby("setting", sort=False):
        accuracy = group.set_index("task")["accuracy"]
        missing = [task for task in tasks if task not in accuracy.index]
        if missing:
            raise InputError(f"{source}: setting {setting} lacks val rows for task(s) {', '.join(missing)}")
        cell = (float(group["rank"].iloc[0]), float(group["lam"].iloc[0]))
        if cell in averages:
            raise InputError(
                f"{source}: several settings at rank {cell[0]:g}, lam {cell[1]:g} (one is {setting}); "
                "expected the other hyper-parameters fixed, one setting per (rank, lam)"
            )
        averages[cell] = 100.0 * float(accuracy.loc[list(tasks)].mean())
    cells = pd.Series(averages)
    cells.index = cells.index.set_names(["rank", "lam"])
    grid = cells.unstack("lam").sort_index().sort_index(axis=1)
    return LambdaRankGrid(
        method,
        grid,
        _cells(val[val["best"]], source, "best")[0],
        tuple(sorted(_cells(val[val["best_at_sweep"]], source, "best_at_sweep"))),
    )


def _cells(rows: pd.DataFrame, source: str, flag: str) -> list[tuple[float, float]]:
    cells = list(dict.fromkeys(zip(rows["rank"].astype(float), rows["lam"].astype(float), strict=True)))
    if not cells:
        raise InputError(f"{source}: no val rows with {flag}=True; expected the val-selected settings marked")
    return cells


def plot_lambda_rank_heatmap(grid: LambdaRankGrid, out_stem: PathLike, title: str | None = None) -> list[Path]:
    """Write `out_stem`.png/.pdf: the grid as an annotated heatmap, rank ratio increasing upwards."""
    ranks, lams = list(grid.accuracy.index), list(grid.accuracy.columns)
    with figure_style():
        # At least wide enough for the two-line x label, however few λ values the grid has.
        width = max(MIN_WIDTH_INCHES, 2.3 + 0.62 * len(lams))
        figure = Figure(figsize=(width, 1.6 + 0.36 * len(ranks)), layout="constrained")
        axes = figure.add_subplot()
        sns.heatmap(
            grid.accuracy,
            ax=axes,
            cmap=COLORMAP,
            annot=True,
            fmt=".1f",
            annot_kws={"fontsize": 7.5},
            linewidths=0.5,
            linecolor="white",
            cbar_kws={"label": "average val accuracy (%)", "shrink": 0.9},
            xticklabels=[f"{lam:g}" for lam in lams],
            yticklabels=[f"{rank:g}" for rank in ranks],
        )
        axes.invert_yaxis()
        # The theme's grid would show through cells that were never run (NaN, left blank).
        axes.grid(False)
        # Annotations sit at the cell centres (column + 0.5, row + 0.5); cells never run have none.
        bold_centres = {(lams.index(lam) + 0.5, ranks.index(rank) + 0.5) for rank, lam in grid.selected_per_rank}
        for text in axes.texts:
            if tuple(text.get_position()) in bold_centres:
                text.set_fontweight("bold")
        row, column = ranks.index(grid.selected[0]), lams.index(grid.selected[1])
        # Black over white, so the outline shows on the dark and on the light end of the colour map.
        for colour, width in (("white", 3.2), ("black", 1.4)):
            axes.add_patch(Rectangle((column, row), 1, 1, fill=False, edgecolor=colour, linewidth=width))
        axes.set_xlabel(
            "λ, coefficient of the low-rank term\noutlined: setting selected on val; bold: λ selected at each rank"
        )
        axes.set_ylabel("rank ratio ρ = k / min(m, n)")
        axes.tick_params(axis="y", rotation=0)
        axes.set_title(heading(f"{display_name(grid.method)}: validation accuracy over rank × λ", title))
        return save_figure(figure, out_stem)
