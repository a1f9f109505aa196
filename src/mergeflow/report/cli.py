"""`mergeflow aggregate`: main table and rank-sweep figure from the per-method evaluation CSVs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mergeflow.io import InputError

RANK_SWEEP_STEM = "rank_sweep"


def add_report_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "aggregate",
        help="write the main table (csv, md, tex) and the rank-sweep figure (png, pdf)",
        description="Build the main results table and the rank-sweep figure from evaluation CSVs.",
    )
    parser.add_argument("--reference", required=True, type=Path, help="reference.csv (zero-shot and individual)")
    parser.add_argument("--results", required=True, nargs="+", type=Path, help="one CSV per method, in table row order")
    parser.add_argument("--tasks", required=True, nargs="+", help="task names, in table column order")
    parser.add_argument("--tables-dir", required=True, type=Path, help="where main.{csv,md,tex} go")
    parser.add_argument("--figures-dir", required=True, type=Path, help="where rank_sweep.{png,pdf} go")
    parser.add_argument("--title", default=None, help="context shown in the table headings and figure title")
    parser.set_defaults(func=run_aggregate)


def run_aggregate(args: argparse.Namespace) -> int:
    # Imported here: pandas and matplotlib would slow every other `mergeflow` verb's start-up.
    from mergeflow.report.figures import plot_rank_sweep
    from mergeflow.report.results import load_method_results, load_reference
    from mergeflow.report.tables import main_table, markdown_table, write_main_table

    reference = load_reference(args.reference)
    results = load_method_results(args.results, tasks=args.tasks)
    # The table and the figure each check their inputs before writing, so bad input writes nothing.
    table = main_table(reference, results, args.tasks)
    plot_rank_sweep(reference, results, args.figures_dir / RANK_SWEEP_STEM, tasks=args.tasks, title=args.title)
    write_main_table(table, args.tables_dir, title=args.title)
    print(markdown_table(table, "accuracy"), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (`python -m mergeflow.report.cli aggregate ...`)."""
    parser = argparse.ArgumentParser(prog="mergeflow-report")
    add_report_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
