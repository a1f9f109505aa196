"""One look for every report figure, and byte-reproducible PNG and PDF output.

The theme is seaborn's "whitegrid" at "paper" scale, applied as an rc context on top of matplotlib's
defaults, so neither a user's matplotlibrc nor seaborn's global state changes a figure. Colours are the
Okabe-Ito palette (distinguishable under the common colour-vision deficiencies); every pair of curves that
must be told apart also differs in line style or marker, so figures still read in grayscale.

Figures are drawn with the object-oriented `Figure` API (no pyplot): no global figure state, and saving
goes straight to the Agg (PNG) or PDF backend. Creation dates and the software stamp are left out, and the
font is pinned to DejaVu Sans (shipped with matplotlib), so the same inputs give the same bytes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import matplotlib.style
import seaborn as sns
from matplotlib.figure import Figure

from mergeflow.evaluation.results import PathLike
from mergeflow.io import atomic_path

PNG_DPI = 200

# Okabe & Ito (2008), "Color Universal Design".
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
GREY = "#666666"
MID_GREY = "#808080"
LIGHT_GREY = "#BBBBBB"

# Centered (CART's) and original task vectors: the two kinds every spectrum and sweep figure compares.
KIND_STYLES = {
    "centered": {"color": OKABE_ITO["blue"], "linestyle": "-", "marker": "o"},
    "original": {"color": OKABE_ITO["vermillion"], "linestyle": (0, (5, 2)), "marker": "s"},
}

_RC = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.titlesize": 10.5,
    "figure.labelsize": 9,
    # whitegrid hides tick marks; short ones make log and symlog axes easier to read.
    "xtick.bottom": True,
    "ytick.left": True,
    "grid.linewidth": 0.5,
    # Embedded TrueType keeps the PDF text editable and searchable.
    "pdf.fonttype": 42,
}
_PNG_METADATA = {"Software": None}
_PDF_METADATA = {"CreationDate": None, "ModDate": None}


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """The report theme, active while figures are drawn and saved."""
    theme = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper"), **_RC}
    with matplotlib.style.context("default"), matplotlib.rc_context(theme):
        yield


def save_figure(figure: Figure, out_stem: PathLike) -> list[Path]:
    """Write `out_stem`.png and `out_stem`.pdf, each atomically; return their paths."""
    stem = Path(out_stem)
    outputs = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"]
    with atomic_path(outputs[0]) as tmp:
        figure.savefig(tmp, format="png", dpi=PNG_DPI, metadata=_PNG_METADATA)
    with atomic_path(outputs[1]) as tmp, _quiet_font_subsetting():
        figure.savefig(tmp, format="pdf", metadata=_PDF_METADATA)
    return outputs


@contextlib.contextmanager
def _quiet_font_subsetting() -> Iterator[None]:
    """fontTools logs every step of embedding a font subset in a PDF at INFO: hundreds of lines per job log."""
    logger = logging.getLogger("fontTools")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def heading(text: str, context: str | None) -> str:
    """A figure title: what it shows, then the run it comes from (benchmark, model) on a second line."""
    return f"{text}\n{context}" if context else text
