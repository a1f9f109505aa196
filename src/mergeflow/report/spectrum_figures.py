"""The spectrum figures, drawn from `mergeflow.report.spectrum.spectrum_curves`.

- spectrum_energy: cumulative spectral energy E_t(k) of centered and original task vectors, one panel
  per layer type (mean over tasks and residual blocks, band from min to max);
- spectrum_error_interference: the reconstruction error R(k) and the row-space interference I(k) of the
  tasks' top-k right singular subspaces against k, pooled over every attention and MLP matrix.

k runs on a log axis from 1 to r = min(m, n); the definitions are in `mergeflow.report.spectrum`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from mergeflow.evaluation.results import PathLike
from mergeflow.io import InputError
from mergeflow.report.spectrum import ALL_LAYERS, KINDS, LAYER_TYPES, SPECTRUM_COLUMNS
from mergeflow.report.style import GREY, KIND_STYLES, figure_style, heading, save_figure

KIND_LABELS = {
    "centered": r"centered, $\bar\tau_t = \theta_t - \theta_{\mathrm{avg}}$ (CART)",
    "original": r"original, $\tau_t = \theta_t - \theta_0$ (task arithmetic)",
}


def plot_spectrum_energy(curves: pd.DataFrame, out_stem: PathLike, title: str | None = None) -> list[Path]:
    """Write `out_stem`.png/.pdf: E_t(k) per layer type, centered vs original."""
    _check_curves(curves)
    layer_types = [name for name in LAYER_TYPES.values() if name in set(curves["layer_type"])]
    if not layer_types:
        raise InputError("spectrum curves hold no layer type; expected attention and MLP matrices")
    with figure_style():
        columns = 2 if len(layer_types) > 1 else 1
        rows = -(-len(layer_types) // columns)
        figure = Figure(figsize=(3.4 * columns, 2.5 * rows + 0.9), layout="constrained")
        grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
        for axes, name in zip(grid.flat, layer_types, strict=False):
            for kind in KINDS:
                group = _positive_k(curves, kind, name)
                style = KIND_STYLES[kind]
                # The min-max range as thin lines in the curve's own dash pattern: filled bands of the two
                # kinds overlap into one muddy area.
                for bound in ("energy_min", "energy_max"):
                    axes.plot(
                        group["k"], group[bound], color=style["color"], linestyle=style["linestyle"], linewidth=0.6
                    )
                axes.plot(
                    group["k"],
                    group["energy_mean"],
                    color=style["color"],
                    linestyle=style["linestyle"],
                    label=KIND_LABELS[kind],
                )
            _k_axis(axes, curves)
            axes.set_title(name)
            axes.set_ylim(0, 1.02)
        for axes in grid.flat[len(layer_types) :]:
            axes.set_visible(False)
        for axes in grid[:, 0]:
            axes.set_ylabel(r"energy $E_t(k)$ (fraction of $\Vert\tau_t\Vert_F^2$)")
        for axes in grid[-1, :]:
            axes.set_xlabel(_k_label(curves))
        figure.suptitle(heading("Spectral energy of task vectors in the top k singular values", title))
        figure.legend(
            *grid[0, 0].get_legend_handles_labels(),
            title="thick: mean over tasks and residual blocks; thin: their min and max",
            loc="outside lower center",
            ncols=2,
            frameon=False,
        )
        return save_figure(figure, out_stem)


def plot_spectrum_error_interference(curves: pd.DataFrame, out_stem: PathLike, title: str | None = None) -> list[Path]:
    """Write `out_stem`.png/.pdf: R(k) and I(k) against k, centered vs original, over all matrices."""
    _check_curves(curves)
    with figure_style():
        figure = Figure(figsize=(7.0, 3.5), layout="constrained")
        error_axes, interference_axes = figure.subplots(1, 2, sharex=True)
        for kind in KINDS:
            group = _positive_k(curves, kind, ALL_LAYERS)
            style = {key: KIND_STYLES[kind][key] for key in ("color", "linestyle")}
            error_axes.plot(group["k"], group["reconstruction_error"], label=KIND_LABELS[kind], **style)
            measured = group[group["interference"].notna()]
            interference_axes.plot(measured["k"], measured["interference"], **style)
        chance = _positive_k(curves, KINDS[0], ALL_LAYERS)
        chance = chance[chance["interference"].notna()]
        interference_axes.plot(
            chance["k"], chance["chance_interference"], color=GREY, linestyle=(0, (1, 2)), label="chance level k / n"
        )
        error_axes.set_title("Reconstruction error R(k)")
        error_axes.set_ylabel(r"$R(k)$ (fraction of $\Sigma_t \Vert\tau_t\Vert_F^2$ lost)")
        error_axes.set_ylim(0, 1.02)
        limit = int(curves.loc[curves["interference"].notna(), "k"].max())
        interference_axes.set_title(f"Row-space interference I(k), k ≤ {limit}")
        interference_axes.set_ylabel(r"$I(k)$ (mean squared cosine)")
        interference_axes.set_ylim(0, 1.02)
        for axes in (error_axes, interference_axes):
            _k_axis(axes, curves)
            axes.set_xlabel(_k_label(curves))
        figure.suptitle(heading("Low-rank approximation of task vectors: lost energy and task overlap", title))
        handles, labels = error_axes.get_legend_handles_labels()
        chance_handles, chance_labels = interference_axes.get_legend_handles_labels()
        figure.legend(
            [*handles, *chance_handles],
            [*labels, *chance_labels],
            loc="outside lower center",
            ncols=2,
            frameon=False,
        )
        return save_figure(figure, out_stem)


def _check_curves(curves: pd.DataFrame) -> None:
    missing = [column for column in SPECTRUM_COLUMNS if column not in curves.columns]
    if missing:
        raise InputError(f"spectrum curves lack column(s) {', '.join(missing)}; expected {', '.join(SPECTRUM_COLUMNS)}")
    absent = [kind for kind in KINDS if kind not in set(curves["kind"])]
    if absent:
        raise InputError(f"spectrum curves lack the {' and '.join(absent)} task vectors; the figures compare both")


def _positive_k(curves: pd.DataFrame, kind: str, layer: str) -> pd.DataFrame:
    """One curve without k = 0, which a log axis cannot show (E(0) = 0 and R(0) = 1 by definition)."""
    return curves[(curves["kind"] == kind) & (curves["layer_type"] == layer) & (curves["k"] > 0)]


def _rank(curves: pd.DataFrame) -> int:
    return int(curves["k"].max())


def _k_label(curves: pd.DataFrame) -> str:
    return f"k, singular components kept per matrix\n(log scale, up to min(m, n) = {_rank(curves)})"


def _k_axis(axes: Axes, curves: pd.DataFrame) -> None:
    """Log k axis from 1 to r, ticked at powers of 2 so that every tick is a whole number of components."""
    rank = _rank(curves)
    axes.set_xscale("log", base=2)
    axes.set_xlim(1, rank)
    ticks = [2**power for power in range(rank.bit_length()) if 2**power <= rank]
    if ticks[-1] != rank:
        ticks.append(rank)
    axes.xaxis.set_major_locator(FixedLocator(ticks))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xticklabels([str(tick) for tick in ticks])
