"""Reporting: tables and figures from evaluation CSVs, SVD factors and several suites' tables.

Names are resolved on first use (`mergeflow.lazy`): pandas and matplotlib load only when needed.
"""

from typing import TYPE_CHECKING

from mergeflow.lazy import lazy_exports

_EXPORTS = {
    "plot_rank_sweep": "figures",
    "lambda_rank_grid": "heatmap",
    "plot_lambda_rank_heatmap": "heatmap",
    "plot_per_task": "per_task",
    "load_published": "published",
    "published_averages": "published",
    "plot_scaling": "scaling",
    "scaling_table": "scaling",
    "write_scaling_table": "scaling",
    "read_matrix_spectra": "spectrum",
    "reconstruction_error": "spectrum",
    "spectrum_curves": "spectrum",
    "subspace_overlap": "spectrum",
    "plot_spectrum_energy": "spectrum_figures",
    "plot_spectrum_error_interference": "spectrum_figures",
    "main_table": "tables",
    "write_main_table": "tables",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from mergeflow.report.figures import plot_rank_sweep
    from mergeflow.report.heatmap import lambda_rank_grid, plot_lambda_rank_heatmap
    from mergeflow.report.per_task import plot_per_task
    from mergeflow.report.published import load_published, published_averages
    from mergeflow.report.scaling import plot_scaling, scaling_table, write_scaling_table
    from mergeflow.report.spectrum import read_matrix_spectra, reconstruction_error, spectrum_curves, subspace_overlap
    from mergeflow.report.spectrum_figures import plot_spectrum_energy, plot_spectrum_error_interference
    from mergeflow.report.tables import main_table, write_main_table

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
