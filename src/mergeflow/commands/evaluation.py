"""Evaluation verbs: reference accuracies, a static method's sweep, joining a split sweep, and the SVD factors."""

from __future__ import annotations

import argparse
import logging

from mergeflow.commands.arguments import add_evaluation_arguments, add_runtime_arguments, json_value
from mergeflow.commands.inputs import EvaluationJob, job_device, load_finetuned
from mergeflow.io import InputError

log = logging.getLogger("mergeflow")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-reference", help="zero-shot and individual fine-tuned accuracies per task")
    add_evaluation_arguments(p)
    p.add_argument(
        "--multitask",
        default=None,
        help="the encoder fine-tuned on all tasks at once (finetune-multitask): its accuracy on every task too",
    )
    p.set_defaults(func=cmd_evaluate_reference)

    p = sub.add_parser("merge-eval", help="merge over a grid, select on val, evaluate test at the selected settings")
    add_evaluation_arguments(p)
    p.add_argument("--method", required=True)
    p.add_argument("--grid", type=json_value, default={}, help="JSON object: hyper-parameter → value or list")
    p.add_argument("--reference", required=True, help="CSV written by evaluate-reference")
    p.add_argument("--factors", default=None, help="task factors from `mergeflow decompose` (cart, lowrank_ta, tsv_m)")
    p.add_argument(
        "--task-statistics",
        nargs="+",
        default=(),
        help="regmean, fisher: each fine-tuned encoder's `mergeflow task-statistics` file, in --tasks order",
    )
    p.add_argument("--training-images", type=int, default=256, help="regmean_plusplus: training images drawn per task")
    p.add_argument("--training-seed", type=int, default=0, help="regmean_plusplus: seed of the draw")
    p.add_argument("--training-batch-size", type=int, default=32, help="regmean_plusplus: images per forward pass")
    p.set_defaults(func=cmd_merge_eval)

    p = sub.add_parser("combine-sweep", help="join merge-eval tables of a rank sweep's parts, select on the whole grid")
    p.add_argument("--method", required=True)
    p.add_argument("--grid", type=json_value, required=True, help="JSON object: the method's whole grid")
    p.add_argument("--parts", nargs="+", required=True, help="merge-eval tables of the parts, in rank order")
    p.add_argument("--parts-correct", nargs="+", required=True, help="the parts' per-image correctness, same order")
    p.add_argument("--out", required=True)
    p.add_argument("--correct", required=True, help="per-image test correctness at the whole grid's selection")
    p.set_defaults(func=cmd_combine_sweep)

    p = sub.add_parser(
        "decompose", help="thin SVD of every (task, matrix) task vector, reused by every rank of a sweep"
    )
    p.add_argument("--pretrained", required=True)
    p.add_argument("--finetuned", nargs="+", required=True)
    p.add_argument("--kind", choices=("centered", "original"), required=True, help="θ_t − θ_avg (cart) or θ_t − θ_0")
    p.add_argument("--out", required=True)
    add_runtime_arguments(p)
    p.set_defaults(func=cmd_decompose)


def cmd_evaluate_reference(args: argparse.Namespace) -> int:
    from mergeflow.evaluation.correctness import save_correctness
    from mergeflow.evaluation.sweep import reference_accuracies
    from mergeflow.io import atomic_path
    from mergeflow.models.clip import pretrained_path

    job = EvaluationJob(args)
    multitask = None
    if args.multitask:
        [multitask] = load_finetuned([args.multitask], job.pretrained, pretrained_path(args.model_dir))
    table, correct = reference_accuracies(job.evaluator, job.pretrained, job.finetuned, multitask)
    save_correctness(args.correct, correct)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    log.info("reference accuracies:\n%s", table.to_string(index=False))
    return 0


def cmd_merge_eval(args: argparse.Namespace) -> int:
    import contextlib

    from mergeflow import merging
    from mergeflow.evaluation.correctness import save_correctness
    from mergeflow.evaluation.sweep import sweep_method
    from mergeflow.io import atomic_path
    from mergeflow.merging.entries import base_method
    from mergeflow.merging.task_statistics import open_task_statistics
    from mergeflow.statistics.images import training_sample

    job = EvaluationJob(args, reference=True)
    factors = merging.load_task_factors(args.factors, device=str(job.device)) if args.factors else None
    if args.task_statistics and len(args.task_statistics) != len(args.tasks):
        counts = f"{len(args.task_statistics)} --task-statistics for {len(args.tasks)} --tasks"
        raise InputError(f"{counts}: expected one statistics file per task")
    training_images = None
    if merging.get_method(base_method(args.method)).reads_training_images:
        training_images = [training_sample(data, args.training_images, args.training_seed) for data in args.data]
    with contextlib.ExitStack() as stack:
        statistics = stack.enter_context(open_task_statistics(args.task_statistics)) if args.task_statistics else None
        rows, correct = sweep_method(
            args.method,
            args.grid,
            job.pretrained,
            job.finetuned,
            job.evaluator,
            job.reference,
            factors=factors,
            task_statistics=statistics,
            training_images=training_images,
            training_batch_size=args.training_batch_size,
            device=str(job.device),
            progress=not args.no_progress,
        )
    save_correctness(args.correct, correct)
    with atomic_path(args.out) as tmp:
        rows.to_csv(tmp, index=False)
    best = rows[rows["best"] & (rows["split"] == "test")]
    log.info(
        "%s: best setting %s, test average accuracy %.4f", args.method, best["setting"].iloc[0], best["accuracy"].mean()
    )
    return 0


def cmd_combine_sweep(args: argparse.Namespace) -> int:
    from mergeflow.evaluation.correctness import load_correctness, save_correctness
    from mergeflow.evaluation.results import read_sweep_table
    from mergeflow.evaluation.sweep import combine_sweep_parts
    from mergeflow.io import atomic_path

    if len(args.parts) != len(args.parts_correct):
        counts = f"{len(args.parts)} --parts but {len(args.parts_correct)} --parts-correct"
        raise InputError(f"{counts}: expected one table and one correctness file per part")
    rows, holder = combine_sweep_parts(args.method, args.grid, [read_sweep_table(path) for path in args.parts])
    correct = load_correctness(args.parts_correct[holder])
    if set(correct) != {args.method}:
        raise InputError(f"{args.parts_correct[holder]}: rows {sorted(correct)}, expected only {args.method!r}")
    save_correctness(args.correct, correct)
    with atomic_path(args.out) as tmp:
        rows.to_csv(tmp, index=False)
    best = rows[rows["best"] & (rows["split"] == "test")]
    log.info("%s: best setting %s (part %d of %d)", args.method, best["setting"].iloc[0], holder + 1, len(args.parts))
    return 0


def cmd_decompose(args: argparse.Namespace) -> int:
    from mergeflow import merging
    from mergeflow.io import load_state_dict

    device = job_device(args)
    pretrained = load_state_dict(args.pretrained)
    finetuned = load_finetuned(args.finetuned, pretrained, args.pretrained)
    factors = merging.compute_task_factors(pretrained, finetuned, centered=args.kind == "centered", device=str(device))
    merging.save_task_factors(args.out, factors)
    log.info(
        "%s task factors of %d matrices × %d tasks → %s", args.kind, len(factors.matrices), factors.num_tasks, args.out
    )
    return 0
