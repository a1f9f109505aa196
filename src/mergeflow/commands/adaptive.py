"""`mergeflow adapt-eval`: one test-time adaptive method as a pipeline job (adapt, then evaluate val and test)."""

from __future__ import annotations

import argparse
import logging

from mergeflow.commands.arguments import add_evaluation_arguments, json_value
from mergeflow.commands.inputs import EvaluationJob

log = logging.getLogger("mergeflow")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "adapt-eval",
        help="learn a test-time adaptive merge on unlabeled test images, then evaluate it on val and test",
        description="AdaMerging, AdaMerging + CART or AdaRank: coefficients (and masks) minimise the prediction "
        "entropy of each task's unlabeled test images; labels are read only afterwards, to measure accuracy.",
    )
    parser.add_argument("--method", required=True, help="adamerging, adamerging_cart or adarank (or name@variant)")
    parser.add_argument(
        "--settings", type=json_value, default={}, help="JSON object: the config's settings of the method"
    )
    parser.add_argument("--cart-eval", default=None, help="cart's merge_eval CSV, for settings given as 'selected'")
    parser.add_argument("--learned", required=True, help="safetensors file for the learned coefficients and masks")
    parser.add_argument("--entropy", required=True, help="CSV file for the entropy per step and task")
    add_evaluation_arguments(parser)
    parser.add_argument("--reference", required=True, help="CSV written by evaluate-reference")
    parser.set_defaults(func=cmd_adapt_eval)


def cmd_adapt_eval(args: argparse.Namespace) -> int:
    import pandas as pd

    from mergeflow.adaptive import UnlabeledTask, save_learned_merge
    from mergeflow.adaptive.job import adapt_and_evaluate, cart_selection
    from mergeflow.adaptive.settings import method_settings
    from mergeflow.evaluation.correctness import save_correctness
    from mergeflow.evaluation.results import load_method_results
    from mergeflow.io import atomic_path
    from mergeflow.models.heads import load_head

    cart = cart_selection(load_method_results([args.cart_eval]), args.cart_eval) if args.cart_eval else None
    settings = method_settings(args.method, args.settings, cart)
    log.info("%s settings: %s", args.method, settings)
    job = EvaluationJob(args, seed=settings.seed, reference=True)
    # Adaptation sees each task's test images and its head; the labels stay in the evaluator.
    unlabeled = [
        UnlabeledTask(split.name, split.test[0], split.head, load_head(head)[1])
        for split, head in zip(job.splits, args.heads)
    ]
    rows, result = adapt_and_evaluate(args.method, settings, job.evaluator, job.pretrained, job.finetuned, unlabeled,
                                      job.reference, job.device, progress=not args.no_progress)  # fmt: skip
    curve = pd.DataFrame(result.task_entropy, columns=args.tasks)
    curve.insert(0, "step", range(len(curve)))
    curve["total"] = result.entropy
    for step in range(0, len(curve), max(1, len(curve) // 10)):
        log.info("step %d: entropy %.4f", step, curve["total"].iloc[step])
    movement = result.movement()
    log.info("%s moved from its start in %d steps: largest coefficient change %.4f; %d of %d singular components "
             "flipped between kept and dropped", args.method, settings.steps, movement.max_coefficient_change,
             movement.flipped_components, movement.masked_components)  # fmt: skip
    save_learned_merge(args.learned, result.learned, movement.as_json())
    # The adapted encoder is still loaded: one more test pass keeps its per-image correctness for the tables.
    save_correctness(args.correct, {args.method: job.evaluator.correct("test")})
    with atomic_path(args.entropy) as tmp:
        curve.to_csv(tmp, index=False)
    with atomic_path(args.out) as tmp:
        rows.to_csv(tmp, index=False)
    test = rows[rows["split"] == "test"]
    log.info("%s: test average accuracy %.4f after %d steps", args.method, test["accuracy"].mean(), settings.steps)
    return 0
