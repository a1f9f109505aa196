"""Reporting: the main results table and the rank-sweep figure from evaluation CSVs.

Names are resolved on first use (`mergeflow.lazy`): pandas and matplotlib load only when needed.
"""

from typing import TYPE_CHECKING

from mergeflow.lazy import lazy_exports

_EXPORTS = {
    "plot_rank_sweep": "figures",
    "load_method_results": "results",
    "load_reference": "results",
    "main_table": "tables",
    "write_main_table": "tables",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from mergeflow.report.figures import plot_rank_sweep
    from mergeflow.report.results import load_method_results, load_reference
    from mergeflow.report.tables import main_table, write_main_table

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
