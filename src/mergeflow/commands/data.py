"""Data verbs: prepare one task's splits (tiny or real), and print the real tasks' protocol (`mergeflow tasks`)."""

from __future__ import annotations

import argparse
import json
import logging

from mergeflow.io import InputError

log = logging.getLogger("mergeflow")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-data", help="generate or download one task's data and store its splits")
    p.add_argument(
        "--source",
        choices=("tiny", "huggingface", "torchvision", "folder", "experts"),
        default="tiny",
        help="tiny: the embedded benchmark; huggingface: the task's hub dataset; torchvision: its torchvision class; "
        "folder: the experts' image folders under --root; experts: per task, the source in the experts' order",
    )
    p.add_argument("--task", required=True)
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--out", required=True, help="task directory")
    p.add_argument(
        "--train-size", type=int, default=None, help="tiny: examples in the full training split (val is held out)"
    )
    p.add_argument("--test-size", type=int, default=None, help="tiny: test examples")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="tiny: training examples held out as val (default: the experts' rule, 10%% of them, at most 5000)",
    )
    p.add_argument("--seed", type=int, default=0, help="tiny: generator seed")
    p.add_argument(
        "--domain-style",
        type=float,
        default=0.0,
        help="tiny: strength of the task's own look, 0-1 (mergeflow.tiny.domains)",
    )
    p.add_argument(
        "--split-shift", type=float, default=0.0, help="tiny: strength of the shift all task splits share, 0-1"
    )
    p.add_argument("--cache-dir", default=None, help="huggingface: hub cache directory (default: HF_HOME's)")
    p.add_argument("--revision", default="main", help="huggingface: dataset revision (branch, tag or commit)")
    p.add_argument("--emnist-split", choices=("digits", "letters"), default="digits", help="EMNIST: which split")
    p.add_argument("--root", default=None, help="torchvision: download directory; folder: the experts' data_location")
    p.add_argument(
        "--no-train",
        action="store_true",
        help="real sources: write val and test only (only fine-tuning reads train; tiny always writes it)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="huggingface, torchvision: image-decoding processes (tiny: ignored)"
    )
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("tasks", help="the protocol of every real task: data, splits, val rule, head texts, expert")
    p.add_argument(
        "--experts",
        default="tall_masks",
        choices=("tall_masks", "cart_authors", "task_vectors", "fusionbench", "finetune"),
        help="whose fine-tuned encoders (finetuned.source); default tall_masks",
    )
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name (for the expert files)")
    p.add_argument(
        "--data-source",
        default=None,
        choices=("experts", "huggingface", "torchvision", "folder"),
        help="data.source (default: experts for the task_vectors / TALL-masks / CART experts, else huggingface)",
    )
    p.add_argument("--revision", default="main", help="data.revision of the hub datasets")
    p.add_argument("--json", action="store_true", help="one JSON object per task instead of text")
    p.set_defaults(func=cmd_tasks)


def cmd_prepare_data(args: argparse.Namespace) -> int:
    if args.source == "tiny":
        counts = _prepare_tiny(args)
    else:
        from mergeflow.image_tasks import prepare_image_task

        counts = prepare_image_task(
            args.task,
            args.out,
            image_size=args.image_size,
            source=args.source,
            cache_dir=args.cache_dir,
            revision=args.revision,
            root=args.root,
            emnist_split=args.emnist_split,
            workers=args.workers,
            progress=not args.no_progress,
            with_train=not args.no_train,
        )
    log.info("%s: wrote %s to %s", args.task, counts, args.out)
    return 0


def _prepare_tiny(args: argparse.Namespace) -> dict[str, int]:
    from mergeflow.tiny.prepare import prepare_tiny_task

    if args.no_train:
        raise InputError("--no-train: the tiny source always writes train (the shipped encoders' recipes hash it)")
    missing = [
        flag for flag, value in (("--train-size", args.train_size), ("--test-size", args.test_size)) if value is None
    ]
    if missing:
        raise InputError(f"--source tiny needs {missing} (data.train_size and data.test_size in the config)")
    return prepare_tiny_task(
        args.task,
        args.out,
        train_size=args.train_size,
        test_size=args.test_size,
        image_size=args.image_size,
        seed=args.seed,
        style=args.domain_style,
        shift=args.split_shift,
        val_size=args.val_size,
    )


def cmd_tasks(args: argparse.Namespace) -> int:
    from mergeflow.image_tasks.protocol import format_protocol, tasks_protocol

    rows = tasks_protocol(args.experts, model=args.model, data_source=args.data_source, revision=args.revision)
    print(json.dumps(rows, indent=1) if args.json else format_protocol(rows))
    return 0
