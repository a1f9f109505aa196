"""Report verbs: tables and figures from the evaluation CSVs, the SVD factors and the suites' tables.

- `mergeflow aggregate`: main table (csv, md, tex) with the published column and bootstrap intervals, rank-sweep
  and per-task figures;
- `mergeflow lambda-rank`: λ × rank heatmap of a rank-sweep method's validation accuracy;
- `mergeflow adaptation`: learned coefficients per block and task (and AdaRank's kept rank) of an adaptive merge;
- `mergeflow spectrum`: energy, reconstruction error and interference of centered vs original task vectors;
- `mergeflow scaling`: average accuracy against the number of tasks, from several suites' main tables.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mergeflow.io import InputError

RANK_SWEEP_STEM = "rank_sweep"
PER_TASK_STEM = "per_task"
SPECTRUM_ENERGY_STEM = "spectrum_energy"
SPECTRUM_ERROR_STEM = "spectrum_error_interference"
SCALING_STEM = "task_count_scaling"


def lambda_rank_stem(method: str) -> str:
    return f"{method}_lambda_rank"


def coefficients_stem(method: str) -> str:
    return f"{method}_coefficients"


def kept_rank_stem(method: str) -> str:
    return f"{method}_kept_rank"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "aggregate",
        help="write the main table (csv, md, tex) and the rank-sweep and per-task figures (png, pdf)",
        description="Build the main results table, with published averages where they apply and bootstrap "
        "intervals over test images, the rank-sweep figure and the per-task accuracy bars from evaluation CSVs.",
    )
    parser.add_argument(
        "--reference", required=True, type=Path, help="reference.csv (zero-shot, individual and, if run, multi-task)"
    )
    parser.add_argument("--results", required=True, nargs="+", type=Path, help="one CSV per method, in table row order")
    parser.add_argument("--tasks", required=True, nargs="+", help="task names, in table column order")
    parser.add_argument(
        "--correct",
        nargs="+",
        type=Path,
        default=None,
        help="per-image test correctness: reference.correct.safetensors and every method's "
        "<method>.correct.safetensors; without them the bootstrap interval columns stay empty",
    )
    parser.add_argument("--tables-dir", required=True, type=Path, help="where main.{csv,md,tex} go")
    parser.add_argument(
        "--figures-dir", required=True, type=Path, help="where rank_sweep.{png,pdf} and per_task.{png,pdf} go"
    )
    parser.add_argument("--title", default=None, help="context shown in the table headings and figure titles")
    parser.add_argument(
        "--published",
        type=Path,
        default=None,
        help="published averages (CSV: model, num_tasks, method, average_accuracy, experts, source); default: "
        "mergeflow's own",
    )
    parser.add_argument(
        "--finetuned-records",
        nargs="*",
        type=Path,
        default=[],
        help="the experts' <task>.json records (mergeflow fetch-finetuned); a difference from a published number "
        "is taken only when its experts are ours",
    )
    parser.add_argument(
        "--data-dirs",
        nargs="*",
        type=Path,
        default=[],
        help="the prepared task directories, in --tasks order: their data records mark tasks whose val split is "
        "not exactly the experts' (and go to tables/tasks.csv)",
    )
    parser.add_argument(
        "--experts",
        default="finetune",
        help="finetuned.source of the run: whose val split the data is judged against (default finetune: ours)",
    )
    parser.add_argument(
        "--published-model",
        default=None,
        help="the open_clip model (OpenAI weights) whose published numbers apply, e.g. ViT-B-32; none without it",
    )
    parser.set_defaults(func=run_aggregate)

    parser = subparsers.add_parser(
        "lambda-rank",
        help="write the λ × rank heatmap of a rank-sweep method's average val accuracy (png, pdf)",
        description="Heatmap of the average validation accuracy of every (rank ratio, λ) setting of one method.",
    )
    parser.add_argument("--results", required=True, type=Path, help="the method's evaluation CSV (e.g. cart.csv)")
    parser.add_argument("--tasks", required=True, nargs="+", help="task names to average over")
    parser.add_argument("--figures-dir", required=True, type=Path, help="where <method>_lambda_rank.{png,pdf} go")
    parser.add_argument("--title", default=None, help="context shown in the figure title")
    parser.set_defaults(func=run_lambda_rank)

    parser = subparsers.add_parser(
        "adaptation",
        help="write where test-time adaptation moved weight: coefficients (and AdaRank's kept rank) per block and task",
        description="Heatmaps of a learned merge (adapt-eval's .learned.safetensors): the mean learned coefficient "
        "per residual block and task, and for adarank the percent of singular components each task keeps.",
    )
    parser.add_argument("--learned", required=True, type=Path, help="the method's <method>.learned.safetensors")
    parser.add_argument("--method", required=True, help="the config entry (figure file names)")
    parser.add_argument("--tasks", required=True, nargs="+", help="task names, in the order adaptation saw them")
    parser.add_argument(
        "--figure",
        choices=("coefficients", "kept_rank"),
        default="coefficients",
        help="coefficients: <method>_coefficients.*; kept_rank (adarank): <method>_kept_rank.*",
    )
    parser.add_argument("--figures-dir", required=True, type=Path, help="where the png and pdf go")
    parser.add_argument("--title", default=None, help="context shown in the figure titles")
    parser.set_defaults(func=run_adaptation)

    parser = subparsers.add_parser(
        "spectrum",
        help="write the spectrum analysis of centered vs original task vectors (csv; png, pdf)",
        description="Cumulative spectral energy per layer type, reconstruction error R(k) and row-space "
        "interference I(k) of the attention and MLP matrices, from the decompose rule's SVD factors.",
    )
    parser.add_argument("--centered", required=True, type=Path, help="task factors of θ_t − θ_avg (decompose)")
    parser.add_argument("--original", required=True, type=Path, help="task factors of θ_t − θ_0 (decompose)")
    parser.add_argument("--table", required=True, type=Path, help="where the curves go as CSV")
    parser.add_argument("--figures-dir", required=True, type=Path, help="where spectrum_*.{png,pdf} go")
    parser.add_argument("--title", default=None, help="context shown in the figure titles")
    parser.set_defaults(func=run_spectrum)

    parser = subparsers.add_parser(
        "scaling",
        help="write average accuracy against the number of tasks (csv, md, tex; png, pdf)",
        description="Compare one model's suites (8, 14, 20 tasks): our and the published average per method.",
    )
    parser.add_argument(
        # Zero or one table is an error that says what is missing, not an argparse usage message.
        "--tables",
        required=True,
        nargs="*",
        type=Path,
        help="the suites' results/<suite>/<model>/tables/main.csv",
    )
    parser.add_argument("--out-dir", required=True, type=Path, help="where task_count_scaling.* go")
    parser.add_argument("--title", default=None, help="context shown in the table heading and figure title")
    parser.set_defaults(func=run_scaling)


def run_aggregate(args: argparse.Namespace) -> int:
    # Imported here: pandas and matplotlib would slow every other `mergeflow` verb's start-up.
    from mergeflow.evaluation.correctness import read_correctness_files
    from mergeflow.evaluation.results import MULTITASK_COLUMN, load_method_results, load_reference
    from mergeflow.io import atomic_path
    from mergeflow.report.figures import plot_rank_sweep
    from mergeflow.report.per_task import plot_per_task
    from mergeflow.report.provenance import APPROXIMATE_MARK, approximate_val, approximate_val_note, task_provenance
    from mergeflow.report.published import (
        experts_notes,
        load_published,
        packaged_published_path,
        published_averages,
        run_experts,
    )
    from mergeflow.report.tables import (
        main_table,
        mark_approximate_val,
        markdown_table,
        published_sources,
        write_main_table,
    )

    reference = load_reference(args.reference)
    results = load_method_results(args.results, tasks=args.tasks)
    published = load_published(args.published or packaged_published_path())
    correctness = read_correctness_files(args.correct) if args.correct else None
    experts = run_experts(args.finetuned_records)
    provenance = task_provenance(args.tasks, args.data_dirs, args.experts) if args.data_dirs else None
    # Every input is checked before anything is written, so bad input writes nothing.
    numbers = published_averages(published, args.published_model, args.tasks, experts)
    table = main_table(reference, results, args.tasks, numbers, correctness)
    references = ["zeroshot", "individual", *(["multitask"] if MULTITASK_COLUMN in reference.columns else [])]
    notes = experts_notes(numbers, experts, [*references, *dict.fromkeys(results["method"])])
    if provenance is not None:
        approximate = approximate_val(provenance)
        mark_approximate_val(
            table, list(approximate), APPROXIMATE_MARK, approximate_val_note(approximate, args.experts)
        )
    plot_rank_sweep(reference, results, args.figures_dir / RANK_SWEEP_STEM, tasks=args.tasks, title=args.title)
    plot_per_task(table, args.figures_dir / PER_TASK_STEM, title=args.title)
    write_main_table(table, args.tables_dir, title=args.title, notes=notes)
    if provenance is not None:
        with atomic_path(args.tables_dir / "tasks.csv") as tmp:
            provenance.to_csv(tmp, index=False, lineterminator="\n")
    print(markdown_table(table, "accuracy"), end="")
    sources = published_sources(table)
    print(f"published: {'; '.join(sources)}" if sources else "published: none for this model and task list")
    return 0


def run_lambda_rank(args: argparse.Namespace) -> int:
    from mergeflow.evaluation.results import load_method_results
    from mergeflow.report.heatmap import lambda_rank_grid, plot_lambda_rank_heatmap

    results = load_method_results([args.results], tasks=args.tasks)
    method = str(results["method"].iloc[0])
    grid = lambda_rank_grid(results, method, args.tasks)
    plot_lambda_rank_heatmap(grid, args.figures_dir / lambda_rank_stem(method), title=args.title)
    print(f"{method}: val-selected rank {grid.selected[0]:g}, lam {grid.selected[1]:g}")
    return 0


def run_adaptation(args: argparse.Namespace) -> int:
    from mergeflow.adaptive import load_learned_merge
    from mergeflow.report.adaptation_figures import plot_coefficients, plot_kept_rank

    learned = load_learned_merge(args.learned)
    source = str(args.learned)
    if args.figure == "coefficients":
        written = plot_coefficients(learned, args.tasks, args.figures_dir / coefficients_stem(args.method), source,
                                    args.title)  # fmt: skip
    else:
        written = plot_kept_rank(learned, args.tasks, args.figures_dir / kept_rank_stem(args.method), source,
                                 args.title)  # fmt: skip
    print(f"{args.method}: wrote {', '.join(str(path) for path in written)}")
    return 0


def run_spectrum(args: argparse.Namespace) -> int:
    from mergeflow.io import atomic_path
    from mergeflow.report.spectrum import read_matrix_spectra, spectrum_curves
    from mergeflow.report.spectrum_figures import plot_spectrum_energy, plot_spectrum_error_interference

    paths = {"centered": args.centered, "original": args.original}
    spectra = {kind: read_matrix_spectra(path, kind) for kind, path in paths.items()}
    curves = spectrum_curves(spectra)
    plot_spectrum_energy(curves, args.figures_dir / SPECTRUM_ENERGY_STEM, title=args.title)
    plot_spectrum_error_interference(curves, args.figures_dir / SPECTRUM_ERROR_STEM, title=args.title)
    with atomic_path(args.table) as tmp:
        curves.to_csv(tmp, index=False, lineterminator="\n")
    for kind, matrices in spectra.items():
        print(f"{kind}: {len(matrices)} attention and MLP matrices of rank {matrices[0].rank} from {paths[kind]}")
    return 0


def run_scaling(args: argparse.Namespace) -> int:
    from mergeflow.report.scaling import plot_scaling, scaling_markdown, scaling_table, write_scaling_table

    scaling = scaling_table(args.tables)
    plot_scaling(scaling, args.out_dir / SCALING_STEM, title=args.title)
    write_scaling_table(scaling, args.out_dir, title=args.title)
    print(scaling_markdown(scaling), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (`python -m mergeflow.commands.report aggregate ...`)."""
    parser = argparse.ArgumentParser(prog="mergeflow-report")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
