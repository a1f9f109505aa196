"""Reporting: the main results table and the rank-sweep figure from evaluation CSVs."""

from mergeflow.report.figures import plot_rank_sweep
from mergeflow.report.results import load_method_results, load_reference
from mergeflow.report.tables import main_table, write_main_table

__all__ = ["load_method_results", "load_reference", "main_table", "plot_rank_sweep", "write_main_table"]
