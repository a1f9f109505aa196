"""The data stage of data-based merges: one fine-tuned encoder's statistics on its task's training images."""

from __future__ import annotations

import argparse
import logging

from mergeflow.commands.arguments import add_runtime_arguments

log = logging.getLogger("mergeflow")

STATISTICS_KINDS = ("grams", "fisher")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "task-statistics",
        help="Gram matrices of every merged linear layer's inputs (RegMean) or the diagonal Fisher (Fisher merging) "
        "of one fine-tuned encoder on a seeded sample of its task's training images",
    )
    p.add_argument("--kind", choices=STATISTICS_KINDS, required=True)
    p.add_argument("--model-dir", required=True, help="the model directory (architecture, θ_0)")
    p.add_argument("--finetuned", required=True, help="the task's fine-tuned image encoder")
    p.add_argument("--data", required=True, help="the task's prepared directory (with a train split)")
    p.add_argument("--head", required=True, help="the task's zero-shot head (the Fisher's classifier)")
    p.add_argument("--images", type=int, default=256, help="training images drawn (FusionBench: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the grams' draw (fisher reads the first images)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--out", required=True, help="safetensors file: merged-weight key → statistic")
    add_runtime_arguments(p)
    p.set_defaults(func=cmd_task_statistics)


def cmd_task_statistics(args: argparse.Namespace) -> int:
    from mergeflow.commands.inputs import job_device
    from mergeflow.data import check_head_fits
    from mergeflow.io import save_state_dict
    from mergeflow.merging.task_statistics import STATISTICS_KIND_METADATA
    from mergeflow.models.clip import load_image_encoder, load_spec
    from mergeflow.models.heads import load_head
    from mergeflow.statistics.images import image_batches, training_sample

    device = job_device(args, seed=args.seed)
    spec = load_spec(args.model_dir)
    visual = load_image_encoder(args.model_dir, args.finetuned).to(device)
    # As FusionBench: RegMean's loader is shuffled, Fisher merging's is not.
    images = training_sample(args.data, args.images, args.seed if args.kind == "grams" else None)
    batches = image_batches(images, spec, args.batch_size, device)
    if args.kind == "grams":
        from mergeflow.statistics.grams import linear_input_grams

        statistics = linear_input_grams(visual, batches)
    else:
        from mergeflow.statistics.fisher import diagonal_fisher

        head, logit_scale = load_head(args.head)
        check_head_fits(head, args.head, args.data)
        statistics = diagonal_fisher(visual, head.to(device), logit_scale.to(device), batches, len(images))
    metadata = {STATISTICS_KIND_METADATA: args.kind, "images": str(len(images)), "seed": str(args.seed),
                "finetuned": str(args.finetuned)}  # fmt: skip
    save_state_dict(args.out, {key: tensor.cpu() for key, tensor in statistics.items()}, metadata)
    log.info("%s of %s on %d training images of %s → %s (%d keys)", args.kind, args.finetuned, len(images), args.data,
             args.out, len(statistics))  # fmt: skip
    return 0
