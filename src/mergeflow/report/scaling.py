"""Task-count scaling: each method's average test accuracy on the 8-, 14- and 20-task suites of one model.

Built from the suites' main tables (`tables/main.csv`, written by `mergeflow aggregate`), which already
carry the published averages, so ours and the paper's are compared suite by suite. One small panel per
method: ours as a solid line with filled circles, published as a dashed line with open squares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from mergeflow.evaluation.results import PathLike
from mergeflow.io import InputError
from mergeflow.report.style import KIND_STYLES, figure_style, heading, save_figure
from mergeflow.report.tables import (
    AVERAGE_COLUMN,
    DIFFERENCE_COLUMN,
    LEADING_COLUMNS,
    PUBLISHED_COLUMN,
    latex_escape,
    task_columns,
    write_table_files,
)

SCALING_COLUMNS = ("method", "num_tasks", "suite", AVERAGE_COLUMN, PUBLISHED_COLUMN, DIFFERENCE_COLUMN)
MAX_PANEL_COLUMNS = 4
# Per task count in the Markdown and LaTeX tables: ours, published, ours minus published.
_WIDE_CELLS = ((AVERAGE_COLUMN, "{:.1f}"), (PUBLISHED_COLUMN, "{:.1f}"), (DIFFERENCE_COLUMN, "{:+.1f}"))
_OURS_STYLE = {"color": KIND_STYLES["centered"]["color"], "linestyle": "-", "marker": "o"}
_PUBLISHED_STYLE = {
    "color": KIND_STYLES["original"]["color"],
    "linestyle": (0, (4, 2)),
    "marker": "s",
    "markerfacecolor": "white",
}


def scaling_table(table_paths: Sequence[PathLike]) -> pd.DataFrame:
    """One row per (method, suite) from the suites' main.csv files, ordered by method then task count.

    The suite is named by the main table's path (`results/<suite>/<model>/tables/main.csv`); the task
    count is the number of task columns. Two tables with the same task count are an error.
    """
    if len(table_paths) < 2:
        raise InputError(
            f"task-count scaling needs the main tables of at least two suites, got {len(table_paths)}; "
            "run the 8-, 14- and 20-task configs of the model first"
        )
    frames = [_suite_rows(Path(path)) for path in table_paths]
    counts = [int(frame["num_tasks"].iloc[0]) for frame in frames]
    repeated = sorted({count for count in counts if counts.count(count) > 1})
    if repeated:
        raise InputError(f"several tables with {repeated[0]} tasks among {', '.join(map(str, table_paths))}")
    combined = pd.concat([frame for _, frame in sorted(zip(counts, frames, strict=True), key=lambda pair: pair[0])])
    order = list(dict.fromkeys(combined["method"]))
    combined["order"] = combined["method"].map(order.index)
    combined = combined.sort_values(["order", "num_tasks"], kind="stable").drop(columns="order")
    return combined.reset_index(drop=True).loc[:, list(SCALING_COLUMNS)]


def _suite_rows(path: Path) -> pd.DataFrame:
    expected = [*LEADING_COLUMNS, AVERAGE_COLUMN, PUBLISHED_COLUMN, DIFFERENCE_COLUMN]
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected a main table written by `mergeflow aggregate`)")
    table = pd.read_csv(path)
    missing = [column for column in expected if column not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; expected a main table with {expected}")
    num_tasks = len(task_columns(table))
    rows = table[table["metric"] == "accuracy"]
    if rows.empty or num_tasks == 0:
        raise InputError(f"{path}: no absolute-accuracy rows or no task columns; expected a main table")
    return pd.DataFrame(
        {
            "method": rows["method"],
            "num_tasks": num_tasks,
            # results/<suite>/<model>/tables/main.csv
            "suite": path.parent.parent.parent.name,
            AVERAGE_COLUMN: rows[AVERAGE_COLUMN].astype(float),
            PUBLISHED_COLUMN: rows[PUBLISHED_COLUMN].astype(float),
            DIFFERENCE_COLUMN: rows[DIFFERENCE_COLUMN].astype(float),
        }
    )


def _wide(scaling: pd.DataFrame) -> tuple[list[int], list[list[str]]]:
    """Task counts and, per method, the cells: ours, published and difference for every task count."""
    counts = sorted(scaling["num_tasks"].unique())
    indexed = scaling.set_index(["method", "num_tasks"])
    rows = []
    for method in dict.fromkeys(scaling["method"]):
        cells = [method]
        for count in counts:
            values = indexed.loc[(method, count)] if (method, count) in indexed.index else None
            for column, form in _WIDE_CELLS:
                value = math.nan if values is None else values[column]
                cells.append("" if pd.isna(value) else form.format(value))
        rows.append(cells)
    return counts, rows


def scaling_markdown(scaling: pd.DataFrame, title: str | None = None) -> str:
    counts, rows = _wide(scaling)
    header = ["method", *(f"{count} tasks {what}" for count in counts for what in ("ours", "published", "difference"))]
    lines = [f"# {title}", ""] if title else []
    lines += [
        "Average absolute test accuracy (%); difference: ours minus published.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join([":---", *("---:" for _ in header[1:])]) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def scaling_latex(scaling: pd.DataFrame, title: str | None = None) -> str:
    counts, rows = _wide(scaling)
    groups = " & ".join(rf"\multicolumn{{3}}{{c}}{{{count} tasks}}" for count in counts)
    rules = "".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(counts)))
    lines = ["% " + " ".join(title.splitlines())] if title else []
    lines += [
        r"% Requires \usepackage{booktabs}. Average absolute test accuracy (%); $\Delta$: ours minus published.",
        r"\begin{tabular}{l" + "rrr" * len(counts) + "}",
        r"\toprule",
        f" & {groups} \\\\",
        rules,
        "Method & " + " & ".join(r"Ours & Published & $\Delta$" for _ in counts) + r" \\",
        r"\midrule",
        *(" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in rows),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def write_scaling_table(scaling: pd.DataFrame, out_dir: PathLike, title: str | None = None) -> list[Path]:
    """Write task_count_scaling.csv (full precision), .md and .tex into `out_dir`, each atomically."""
    stem = Path(out_dir) / "task_count_scaling"
    return write_table_files(scaling, stem, scaling_markdown(scaling, title), scaling_latex(scaling, title))


def plot_scaling(scaling: pd.DataFrame, out_stem: PathLike, title: str | None = None) -> list[Path]:
    """Write `out_stem`.png/.pdf: average accuracy against the number of tasks, one panel per method."""
    methods = list(dict.fromkeys(scaling["method"]))
    counts = sorted(scaling["num_tasks"].unique())
    columns = min(MAX_PANEL_COLUMNS, len(methods))
    rows = math.ceil(len(methods) / columns)
    with figure_style():
        figure = Figure(figsize=(1.2 + 1.9 * columns, 1.2 + 1.75 * rows), layout="constrained")
        grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
        for axes, method in zip(grid.flat, methods, strict=False):
            points = scaling[scaling["method"] == method]
            axes.plot(points["num_tasks"], points[AVERAGE_COLUMN], label="ours", **_OURS_STYLE)
            published = points[points[PUBLISHED_COLUMN].notna()]
            axes.plot(published["num_tasks"], published[PUBLISHED_COLUMN], label="published", **_PUBLISHED_STYLE)
            axes.set_title(method)
        for axes in grid.flat[len(methods) :]:
            axes.set_visible(False)
        for column in range(columns):
            lowest = max(row for row in range(rows) if row * columns + column < len(methods))
            grid[lowest, column].set_xlabel("number of tasks")
            grid[lowest, column].xaxis.set_tick_params(labelbottom=True)
        for axes in grid[:, 0]:
            axes.set_ylabel("avg. test accuracy (%)")
        first = grid[0, 0]
        first.set_xticks(counts, [str(count) for count in counts])
        low, high = min(counts), max(counts)
        margin = 0.12 * (high - low)
        first.set_xlim(low - margin, high + margin)
        figure.suptitle(heading("Average test accuracy against the number of merged tasks", title))
        figure.legend(*first.get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
        return save_figure(figure, out_stem)
