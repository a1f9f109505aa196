"""The rank-sweep figure: average test accuracy against the rank ratio ρ.

Drawn in the report style (`mergeflow.report.style`): same inputs, same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from mergeflow.evaluation.results import MULTITASK_COLUMN, PathLike, source_of
from mergeflow.io import InputError
from mergeflow.merging.registry import METHODS
from mergeflow.report.style import GREY, KIND_STYLES, LIGHT_GREY, OKABE_ITO, figure_style, heading, save_figure

SWEEP_METHOD_LABELS = {
    "cart": "centered task vectors (CART)",
    "lowrank_ta": "original task vectors (low-rank TA)",
}
# Below this ρ the symlog axis is linear, so ρ = 0 has a place and 0.02-0.16 stay apart.
SYMLOG_LINEAR_THRESHOLD = 0.02
# Width of that linear part in decades: enough to separate 0 from 0.02 without wasting the axis.
SYMLOG_LINEAR_SCALE = 0.4

# Each line has its own colour and dash pattern (or marker), so the figure also reads in grayscale.
_SWEEP_STYLES = {"cart": KIND_STYLES["centered"], "lowrank_ta": KIND_STYLES["original"]}
_REFERENCE_STYLES = {
    "individual": {"color": OKABE_ITO["black"], "linestyle": "-", "linewidth": 0.9},
    "multi-task": {"color": OKABE_ITO["black"], "linestyle": (0, (5, 2)), "linewidth": 0.9},
    "task arithmetic": {"color": OKABE_ITO["reddish_purple"], "linestyle": (0, (9, 3)), "linewidth": 1.2},
    "weight averaging": {"color": OKABE_ITO["bluish_green"], "linestyle": (0, (4, 1.5, 1, 1.5)), "linewidth": 1.2},
    "zero-shot": {"color": GREY, "linestyle": (0, (1, 2)), "linewidth": 1.2},
}
# The methods since CART that are no rank sweep, each a reference line of its own when the run has it: thin, so
# that the two curves stay in front. (The calibrated merges are their base merges at one setting, left out.)
_NEWER_REFERENCES = {
    "wudi": {"color": OKABE_ITO["yellow"], "linestyle": (0, (2, 1)), "linewidth": 0.9},
    "regmean": {"color": OKABE_ITO["sky_blue"], "linestyle": (0, (6, 2, 1, 2)), "linewidth": 0.9},
    "regmean_plusplus": {"color": OKABE_ITO["orange"], "linestyle": (0, (6, 2)), "linewidth": 0.9},
    "fisher": {"color": LIGHT_GREY, "linestyle": (0, (3, 1, 1, 1, 1, 1)), "linewidth": 0.9},
    "emr": {"color": OKABE_ITO["black"], "linestyle": (0, (1, 1)), "linewidth": 0.9},
}


@dataclass(frozen=True)
class SweepCurve:
    method: str
    ranks: tuple[float, ...]
    average_accuracy: tuple[float, ...]  # percent, one per rank


@dataclass(frozen=True)
class ReferenceLine:
    label: str
    average_accuracy: float  # percent
    style: str = ""  # a _NEWER_REFERENCES key; empty: the label's own style


def plot_rank_sweep(
    reference: pd.DataFrame,
    results: pd.DataFrame,
    out_stem: PathLike,
    tasks: Sequence[str] | None = None,
    title: str | None = None,
) -> list[Path]:
    """Write `out_stem`.png and `out_stem`.pdf; return their paths.

    Averages run over `tasks` (default: every task with a test row in `reference`).
    Each rank's point is that rank's val-selected setting (`best_at_sweep` test rows).
    """
    task_list = list(tasks) if tasks is not None else _test_tasks(reference)
    curves = sweep_curves(results, task_list)
    lines = reference_lines(reference, results, task_list)
    with figure_style():
        return save_figure(_draw(curves, lines, title), out_stem)


def sweep_curves(results: pd.DataFrame, tasks: Sequence[str]) -> list[SweepCurve]:
    """Average test accuracy per rank for each sweep method present; at least one must be."""
    present = [method for method in SWEEP_METHOD_LABELS if (results["method"] == method).any()]
    curves = [_sweep_curve(results, method, tasks) for method in present]
    if not curves:
        raise InputError(
            f"no results for {' or '.join(SWEEP_METHOD_LABELS)}; expected at least one rank-sweep method for the figure"
        )
    return curves


def _sweep_curve(results: pd.DataFrame, method: str, tasks: Sequence[str]) -> SweepCurve:
    rows = results[(results["method"] == method) & results["best_at_sweep"] & (results["split"] == "test")]
    source = source_of(results, method)
    if rows.empty:
        raise InputError(f"{source}: no test rows with best_at_sweep=True; expected one val-selected setting per rank")
    if rows["rank"].isna().any():
        raise InputError(f"{source}: best_at_sweep test rows without a rank; expected a rank ratio on every one")
    points: dict[float, float] = {}
    for setting, group in rows.groupby("setting", sort=False):
        rank = float(group["rank"].iloc[0])
        if rank in points:
            raise InputError(
                f"{source}: several best_at_sweep settings at rank {rank:g} (one is {setting}); "
                "expected exactly one val-selected setting per rank"
            )
        points[rank] = _average_percent(group, tasks, f"{source}: setting {setting}")
    ranks = sorted(points)
    return SweepCurve(method, tuple(ranks), tuple(points[rank] for rank in ranks))


def reference_lines(reference: pd.DataFrame, results: pd.DataFrame, tasks: Sequence[str]) -> list[ReferenceLine]:
    """Individual, the multi-task model (when `reference` has its column), weight averaging, task arithmetic and the
    newer methods (those present) and zero-shot, highest first."""
    if not (results["method"] == "weight_averaging").any():
        raise InputError("no results for weight_averaging; expected them for the figure's reference line")
    test = reference[reference["split"] == "test"].set_index("task")
    missing = [task for task in tasks if task not in test.index]
    if missing:
        source = reference.attrs.get("source", "reference")
        raise InputError(f"{source}: no test row for task(s) {', '.join(missing)}; expected one per plotted task")
    lines = [
        ReferenceLine("individual", 100.0 * float(test.loc[list(tasks), "individual"].mean())),
        ReferenceLine("zero-shot", 100.0 * float(test.loc[list(tasks), "zeroshot"].mean())),
    ]
    if MULTITASK_COLUMN in test.columns:
        lines.append(ReferenceLine("multi-task", 100.0 * float(test.loc[list(tasks), MULTITASK_COLUMN].mean())))
    for method, label in (("task_arithmetic", "task arithmetic"), ("weight_averaging", "weight averaging")):
        if (results["method"] == method).any():
            lines.append(ReferenceLine(label, _best_average_percent(results, method, tasks)))
    for method in _NEWER_REFERENCES:
        if (results["method"] == method).any():
            accuracy = _best_average_percent(results, method, tasks)
            lines.append(ReferenceLine(METHODS[method].display, accuracy, style=method))
    # Highest first, so the legend lists them in the order they appear on the plot.
    return sorted(lines, key=lambda line: -line.average_accuracy)


def _best_average_percent(results: pd.DataFrame, method: str, tasks: Sequence[str]) -> float:
    rows = results[(results["method"] == method) & results["best"] & (results["split"] == "test")]
    source = source_of(results, method)
    if rows.empty:
        raise InputError(f"{source}: no test rows with best=True; expected the test rows of the val-selected setting")
    return _average_percent(rows, tasks, f"{source}: best setting")


def _average_percent(rows: pd.DataFrame, tasks: Sequence[str], where: str) -> float:
    accuracy = rows.set_index("task")["accuracy"]
    missing = [task for task in tasks if task not in accuracy.index]
    if missing:
        raise InputError(f"{where} lacks test rows for task(s) {', '.join(missing)}; expected every plotted task")
    return 100.0 * float(accuracy.loc[list(tasks)].mean())


def _test_tasks(reference: pd.DataFrame) -> list[str]:
    return list(pd.unique(reference.loc[reference["split"] == "test", "task"]))


def _draw(curves: Sequence[SweepCurve], lines: Sequence[ReferenceLine], title: str | None) -> Figure:
    figure = Figure(figsize=(6.4, 4.6), layout="constrained")
    axes = figure.add_subplot()
    # The scale is set before drawing so that autoscaling adds its margins in symlog space.
    axes.set_xscale("symlog", linthresh=SYMLOG_LINEAR_THRESHOLD, linscale=SYMLOG_LINEAR_SCALE)
    # Reference lines first, so they lie under the curves.
    line_handles = [
        axes.axhline(
            line.average_accuracy,
            label=f"{line.label} ({line.average_accuracy:.1f})",
            **(_NEWER_REFERENCES[line.style] if line.style else _REFERENCE_STYLES[line.label]),
        )
        for line in lines
    ]
    curve_handles = [
        axes.plot(
            curve.ranks,
            curve.average_accuracy,
            linewidth=1.8,
            markersize=5,
            label=SWEEP_METHOD_LABELS[curve.method],
            **_SWEEP_STYLES[curve.method],
        )[0]
        for curve in curves
    ]
    ranks = sorted({rank for curve in curves for rank in curve.ranks})
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xticks(ranks, [f"{rank:g}" for rank in ranks])
    axes.set_xlabel(f"rank ratio ρ = k / min(m, n)  (symlog scale, linear below {SYMLOG_LINEAR_THRESHOLD:g})")
    axes.set_ylabel("average test accuracy (%)")
    axes.set_title(heading("Low-rank merging: average test accuracy vs. rank ratio", title))
    # Outside the axes so it can never hide data.
    figure.legend(handles=[*curve_handles, *line_handles], loc="outside lower center", ncols=2, frameon=False)
    return figure
