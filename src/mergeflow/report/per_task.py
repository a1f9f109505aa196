"""Per-task accuracy bars: test accuracy of every table row (zero-shot, individual, each method at its
val-selected setting) on each task, one small panel per task after one for the average.

Methods are told apart by their position and label (the same order in every panel, as in the table),
so the figure needs no colour legend; colour only groups the rows: reference models in grey (zero-shot light,
the multi-task model mid, the individual models dark), merges in light blue, CART and its variants in dark blue,
which stay distinct in grayscale.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mergeflow.evaluation.results import PathLike
from mergeflow.io import InputError
from mergeflow.report.style import GREY, LIGHT_GREY, MID_GREY, OKABE_ITO, figure_style, heading, save_figure
from mergeflow.report.tables import (
    AVERAGE_COLUMN,
    INDIVIDUAL_ROW,
    MULTITASK_ROW,
    ZERO_SHOT_ROW,
    display_name,
    task_columns,
)

ROW_COLOURS = {ZERO_SHOT_ROW: LIGHT_GREY, INDIVIDUAL_ROW: GREY, MULTITASK_ROW: MID_GREY}
MERGE_COLOUR = OKABE_ITO["sky_blue"]
CART_COLOUR = OKABE_ITO["blue"]
MAX_PANEL_COLUMNS = 5
# Bar colours that need white value labels.
DARK_COLOURS = frozenset({GREY, CART_COLOUR})


def per_task_accuracies(table: pd.DataFrame) -> pd.DataFrame:
    """Absolute test accuracy (%) from a main table: one row per method, columns `average` and each task."""
    rows = table[table["metric"] == "accuracy"]
    if rows.empty:
        raise InputError("main table has no absolute-accuracy rows; expected metric 'accuracy'")
    return rows.set_index("method").loc[:, [AVERAGE_COLUMN, *task_columns(table)]]


def row_colour(method: str) -> str:
    """Grey for the reference rows, dark blue for CART (any variant), light blue for every other merge."""
    if method in ROW_COLOURS:
        return ROW_COLOURS[method]
    return CART_COLOUR if method.partition(" (")[0] == display_name("cart") else MERGE_COLOUR


def plot_per_task(table: pd.DataFrame, out_stem: PathLike, title: str | None = None) -> list[Path]:
    """Write `out_stem`.png/.pdf: horizontal bars, methods top to bottom in table order, one panel per column."""
    accuracies = per_task_accuracies(table)
    methods = list(accuracies.index)
    panels = list(accuracies.columns)
    columns = min(MAX_PANEL_COLUMNS, math.ceil(math.sqrt(len(panels))))
    rows = math.ceil(len(panels) / columns)
    positions = np.arange(len(methods))
    colours = [row_colour(method) for method in methods]
    with figure_style():
        figure = Figure(figsize=(1.4 + 1.9 * columns, 0.9 + rows * (0.4 + 0.15 * len(methods))), layout="constrained")
        grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
        for axes, panel in zip(grid.flat, panels, strict=False):
            bars = axes.barh(positions, accuracies[panel], color=colours, edgecolor="none", height=0.75)
            # Values inside the bars: differences of a point or two are invisible at a 0-100 scale.
            axes.bar_label(
                bars,
                labels=[f"{value:.1f}" for value in accuracies[panel]],
                label_type="center",
                fontsize=6,
                color=OKABE_ITO["black"],
            )
            for label, colour in zip(axes.texts, colours, strict=True):
                if colour in DARK_COLOURS:
                    label.set_color("white")
            is_average = panel == AVERAGE_COLUMN
            axes.set_title("average over tasks" if is_average else panel, fontweight="bold" if is_average else None)
            axes.grid(axis="y", visible=False)
        for axes in grid.flat[len(panels) :]:
            axes.set_visible(False)
        first = grid[0, 0]
        first.set_yticks(positions, methods)
        first.invert_yaxis()
        first.set_xlim(0, 100)
        first.set_xticks([0, 25, 50, 75, 100])
        # The last row may be partly empty: label the lowest visible panel of each column instead.
        for column in range(columns):
            lowest = max(row for row in range(rows) if row * columns + column < len(panels))
            grid[lowest, column].set_xlabel("test accuracy (%)")
            grid[lowest, column].xaxis.set_tick_params(labelbottom=True)
        figure.suptitle(heading("Test accuracy per task at each method's val-selected setting", title))
        return save_figure(figure, out_stem)
