"""The `mergeflow` command: one verb per pipeline stage, each callable without Snakemake."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mergeflow.io import InputError

if TYPE_CHECKING:
    from mergeflow.finetune import FinetuneSettings

log = logging.getLogger("mergeflow")


def _json_arg(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None


def _same_length(args: argparse.Namespace, names: Sequence[str]) -> None:
    lengths = {name: len(getattr(args, name)) for name in names}
    if len(set(lengths.values())) != 1:
        raise InputError(f"these lists must have one entry per task: {lengths}")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if visible, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="disable progress bars")


def _setup(args: argparse.Namespace, seed: int | None = None) -> object:
    from mergeflow.gpu_lease import lease_device_for_job
    from mergeflow.runtime import configure_threads, seed_everything, select_device

    # Before CUDA starts: the lease decides which GPU this process sees.
    lease = lease_device_for_job(args.device)
    if lease is not None:
        log.info("gpu lease: CUDA_VISIBLE_DEVICES=%s (lock %s)", lease.device, lease.path)
    configure_threads(args.threads)
    if seed is not None:
        seed_everything(seed)
    device = select_device(args.device)
    log.info("device: %s", device)
    return device


def cmd_prepare_data(args: argparse.Namespace) -> int:
    if args.source == "tiny":
        if args.no_train:
            raise InputError("--no-train: the tiny source always writes train (the shipped encoders' recipes hash it)")
        return _prepare_tiny_task(args)
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


def _prepare_tiny_task(args: argparse.Namespace) -> int:
    from mergeflow.data import TaskClasses, write_task
    from mergeflow.tiny import TINY_TASKS
    from mergeflow.tiny.splits import task_splits

    missing = [
        flag for flag, value in (("--train-size", args.train_size), ("--test-size", args.test_size)) if value is None
    ]
    if missing:
        raise InputError(f"--source tiny needs {missing} (data.train_size and data.test_size in the config)")
    task = TINY_TASKS.get(args.task)
    if task is None:
        raise InputError(f"--task {args.task!r}: unknown tiny task; expected one of {sorted(TINY_TASKS)}")
    train, test = task_splits(
        args.task,
        args.train_size,
        args.test_size,
        args.image_size,
        args.seed,
        style=args.domain_style,
        shift=args.split_shift,
    )
    counts = write_task(args.out, args.task, TaskClasses(task.classnames, task.templates), train, test)
    log.info("%s: wrote %s to %s", args.task, counts, args.out)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    import torch

    from mergeflow.model import build_clip, build_tokenizer, save_model_dir, tiny_clip_spec
    from mergeflow.pretrain import PretrainSettings, contrastive_pretrain, noisy_captions
    from mergeflow.tiny import TINY_TASKS, caption
    from mergeflow.tiny.splits import pretraining_pool

    device = _setup(args, args.seed)
    spec = tiny_clip_spec(args.name, args.architecture)
    pool, task_labels = pretraining_pool(
        args.tasks, args.images_per_task, spec.image_size, args.data_seed, style=args.domain_style
    )
    counts = {task: len(TINY_TASKS[task].classnames) for task in args.tasks}
    captions, caption_ids = noisy_captions(task_labels, caption, counts, args.caption_noise, args.seed)
    tokens = build_tokenizer(spec)(captions)
    clip = build_clip(spec)
    settings = PretrainSettings(args.steps, args.batch_size, args.lr, args.weight_decay, args.warmup_steps, args.seed)
    losses = contrastive_pretrain(
        clip, spec, pool, tokens, torch.tensor(caption_ids), settings, device, progress=not args.no_progress
    )
    log.info("pretrain loss: first %.4f, last %.4f over %d steps", losses[0], losses[-1], len(losses))
    save_model_dir(args.out, spec, clip.cpu())
    return 0


def cmd_install_pretrained(args: argparse.Namespace) -> int:
    from mergeflow.shipped import install_shipped

    install_shipped(args.shipped, args.out)
    log.info("installed the shipped θ_0 %s → %s (sha256 checked)", args.shipped, args.out)
    return 0


def cmd_fetch_pretrained(args: argparse.Namespace) -> int:
    from mergeflow.pretrained import fetch_pretrained

    fetch_pretrained(
        args.model,
        args.pretrained,
        args.out,
        image_size=args.image_size,
        revision=args.revision,
        cache_dir=args.cache_dir,
    )
    return 0


def cmd_fetch_finetuned(args: argparse.Namespace) -> int:
    from mergeflow.checkpoints import fetch_finetuned
    from mergeflow.io import load_state_dict

    if not isinstance(args.source, dict) or "source" not in args.source:
        raise InputError(f"--source {args.source!r}: expected a JSON object with a 'source' key (config: finetuned)")
    record = fetch_finetuned(
        args.source,
        model=args.model,
        task=args.task,
        pretrained=load_state_dict(args.pretrained),
        out=args.out,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )
    log.info("%s/%s: %s", args.model, args.task, json.dumps(record, sort_keys=True))
    return 0


def cmd_build_head(args: argparse.Namespace) -> int:
    from mergeflow.data import load_classes
    from mergeflow.heads import save_head, zero_shot_head
    from mergeflow.model import build_tokenizer, load_clip

    device = _setup(args)
    spec, clip = load_clip(args.model_dir)
    classes = load_classes(args.data_dir)
    task = Path(args.data_dir).name
    names, templates = classes.classnames, classes.templates
    if args.class_texts == "experts":
        names, templates = _experts_class_texts(args.data_dir, len(names))
    head = zero_shot_head(clip.to(device), build_tokenizer(spec), names, templates, device)
    texts = args.class_texts if args.class_texts == "experts" else None
    save_head(args.out, head, clip.logit_scale.detach().cpu(), task=task, model=spec.name, class_texts=texts)
    log.info("head %s (%s class texts): %d classes × %d templates → %s", task, args.class_texts, len(names),
             len(templates), args.out)  # fmt: skip
    return 0


def _experts_class_texts(data_dir: str, num_classes: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The experts' code's class texts of the real task prepared in `data_dir` (its classnames.json names it)."""
    from mergeflow.data import classes_path
    from mergeflow.image_tasks.provenance import class_texts
    from mergeflow.image_tasks.registry import TASKS
    from mergeflow.io import read_json

    task = read_json(classes_path(data_dir)).get("task")
    if task not in TASKS:
        raise InputError(f"{classes_path(data_dir)}: task {task!r} has no experts' class texts (real tasks only)")
    names, templates = class_texts(task, "experts")
    if len(names) != num_classes:
        raise InputError(f"{classes_path(data_dir)}: {num_classes} classes, but the experts' {task} has {len(names)}")
    return names, templates


def _install_shipped_finetuned(args: argparse.Namespace, settings: FinetuneSettings) -> bool:
    """Install the shipped encoder when it is exactly this job's result; log why not otherwise."""
    from mergeflow.shipped_finetuned import finetune_inputs, finetune_recipe, install_finetuned, unmatched_inputs

    task = Path(args.data_dir).name
    inputs = finetune_inputs(args.model_dir, args.data_dir)
    differences = unmatched_inputs(args.shipped, task, finetune_recipe(settings.as_recipe(), inputs))
    if differences is None:
        log.info("fine-tuning: %s ships no encoder for %r", args.shipped, task)
        return False
    if differences:
        log.info("fine-tuning: the shipped encoder of %r in %s was made with other %s", task, args.shipped,
                 ", ".join(differences))  # fmt: skip
        return False
    install_finetuned(args.shipped, task, args.out)
    log.info("installed the shipped fine-tuned encoder of %r from %s (same settings, and by sha256 the same θ_0, "
             "text tower, class names and train split; the encoder's own sha256 checked)",
             task, args.shipped)  # fmt: skip
    return True


def cmd_finetune(args: argparse.Namespace) -> int:
    from mergeflow.data import check_head_fits, load_split
    from mergeflow.finetune import FinetuneSettings, finetune_image_encoder
    from mergeflow.heads import load_head
    from mergeflow.io import save_state_dict
    from mergeflow.model import load_image_encoder, load_spec

    settings = FinetuneSettings(
        args.steps,
        args.batch_size,
        args.lr,
        args.weight_decay,
        args.warmup_steps,
        args.grad_clip,
        args.seed,
        micro_batch_size=args.micro_batch_size,
    )
    head, logit_scale = load_head(args.head)
    check_head_fits(head, args.head, args.data_dir)
    images, labels = load_split(args.data_dir, "train")
    if args.shipped and _install_shipped_finetuned(args, settings):
        return 0
    device = _setup(args, args.seed)
    spec = load_spec(args.model_dir)
    visual = load_image_encoder(args.model_dir)
    losses = finetune_image_encoder(
        visual, head, logit_scale, images, labels, spec, settings, device, progress=not args.no_progress
    )
    log.info("finetune loss: first %.4f, last %.4f over %d steps", losses[0], losses[-1], len(losses))
    save_state_dict(args.out, visual.cpu().state_dict(), {"model": spec.name, "task": Path(args.data_dir).name})
    return 0


def _load_finetuned(paths: Sequence[str], pretrained: object, pretrained_name: object) -> list:
    """The fine-tuned state dicts, each checked against θ_0's keys and shapes with its file named in errors."""
    from mergeflow.io import load_state_dict
    from mergeflow.merging.sources import check_compatible, specs_of

    models = [load_state_dict(path) for path in paths]
    check_compatible(
        str(pretrained_name), specs_of(pretrained), [(str(path), specs_of(m)) for path, m in zip(paths, models)]
    )
    return models


def _task_splits(args: argparse.Namespace) -> list:
    from mergeflow.data import check_head_fits, load_split
    from mergeflow.heads import load_head
    from mergeflow.merge_eval import TaskSplits

    splits = []
    for task, head_path, data in zip(args.tasks, args.heads, args.data):
        head = load_head(head_path)[0]
        check_head_fits(head, head_path, data)
        splits.append(TaskSplits(task, head, load_split(data, "val"), load_split(data, "test")))
    return splits


def _evaluator(args: argparse.Namespace, device: object, pretrained: object, splits: list | None = None) -> object:
    from mergeflow.evaluate import EvalSettings
    from mergeflow.merge_eval import SweepEvaluator
    from mergeflow.model import load_image_encoder, load_spec

    settings = EvalSettings(batch_size=args.batch_size, precision=args.precision, resident_mb=args.resident_mb)
    visual = load_image_encoder(args.model_dir, pretrained)
    return SweepEvaluator(visual, load_spec(args.model_dir), splits or _task_splits(args), device, settings)


def _reference(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The individual accuracies per split and task from evaluate-reference's CSV (the normalisers)."""
    from mergeflow.report.results import load_reference

    table = load_reference(args.reference)
    reference = {split: dict(zip(group["task"], group["individual"])) for split, group in table.groupby("split")}
    missing = [t for t in args.tasks if t not in reference.get("val", {}) or t not in reference.get("test", {})]
    if missing:
        raise InputError(f"{args.reference}: no val/test rows for tasks {missing}")
    return reference


def cmd_evaluate_reference(args: argparse.Namespace) -> int:
    from mergeflow.io import atomic_path, load_state_dict
    from mergeflow.merge_eval import reference_accuracies
    from mergeflow.model import pretrained_path
    from mergeflow.report.correctness import save_correctness

    _same_length(args, ["tasks", "heads", "data", "finetuned"])
    device = _setup(args)
    pretrained = load_state_dict(pretrained_path(args.model_dir))
    evaluator = _evaluator(args, device, pretrained)
    finetuned = _load_finetuned(args.finetuned, pretrained, pretrained_path(args.model_dir))
    table, correct = reference_accuracies(evaluator, pretrained, finetuned)
    save_correctness(args.correct, correct)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    log.info("reference accuracies:\n%s", table.to_string(index=False))
    return 0


def cmd_merge_eval(args: argparse.Namespace) -> int:
    from mergeflow import merging
    from mergeflow.io import atomic_path, load_state_dict
    from mergeflow.merge_eval import sweep_method
    from mergeflow.model import pretrained_path
    from mergeflow.report.correctness import save_correctness

    _same_length(args, ["tasks", "heads", "data", "finetuned"])
    device = _setup(args)
    pretrained = load_state_dict(pretrained_path(args.model_dir))
    reference = _reference(args)
    evaluator = _evaluator(args, device, pretrained)
    finetuned = _load_finetuned(args.finetuned, pretrained, pretrained_path(args.model_dir))
    factors = merging.load_task_factors(args.factors, device=str(device)) if args.factors else None
    rows, correct = sweep_method(
        args.method,
        args.grid,
        pretrained,
        finetuned,
        evaluator,
        reference,
        factors=factors,
        device=str(device),
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
    from mergeflow.io import atomic_path
    from mergeflow.merge_eval import combine_sweep_parts, read_sweep_table
    from mergeflow.report.correctness import load_correctness, save_correctness

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

    device = _setup(args)
    pretrained = load_state_dict(args.pretrained)
    finetuned = _load_finetuned(args.finetuned, pretrained, args.pretrained)
    factors = merging.compute_task_factors(pretrained, finetuned, centered=args.kind == "centered", device=str(device))
    merging.save_task_factors(args.out, factors)
    log.info(
        "%s task factors of %d matrices × %d tasks → %s", args.kind, len(factors.matrices), factors.num_tasks, args.out
    )
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """Every method a config's `methods` may name: the static merges, then the test-time adaptive ones."""
    from mergeflow.adaptive.settings import SETTINGS_CLASSES, describe_settings
    from mergeflow.merging.cli import describe_method
    from mergeflow.merging.registry import METHODS

    for method in METHODS.values():
        print("\n".join(describe_method(method)))
    for settings in SETTINGS_CLASSES.values():
        print("\n".join(describe_settings(settings)))
    return 0


def _evaluation_arguments(p: argparse.ArgumentParser) -> None:
    """The inputs and evaluation options of every verb that measures accuracy on all tasks."""
    p.add_argument("--model-dir", required=True)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--heads", nargs="+", required=True, help="one head file per task, in --tasks order")
    p.add_argument("--data", nargs="+", required=True, help="one prepared task directory per task")
    p.add_argument("--finetuned", nargs="+", required=True, help="one fine-tuned image encoder per task")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="autocast precision; auto: fp16 on CUDA, fp32 on the CPU (config: evaluation.precision)",
    )
    p.add_argument(
        "--resident-mb",
        type=float,
        default=4096.0,
        help="MiB of uint8 images kept on the device between sweep points; the rest is streamed",
    )
    p.add_argument("--out", required=True, help="CSV file")
    p.add_argument(
        "--correct",
        required=True,
        help="safetensors file for the per-image test correctness behind the CSV's selected test rows",
    )
    _common(p)


def cmd_tasks(args: argparse.Namespace) -> int:
    from mergeflow.protocol import format_protocol, tasks_protocol

    rows = tasks_protocol(args.experts, model=args.model, data_source=args.data_source, revision=args.revision)
    print(json.dumps(rows, indent=1) if args.json else format_protocol(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergeflow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser("fetch-pretrained", help="download open_clip pretrained weights into a model directory")
    p.add_argument("--model", required=True, help="open_clip model name, e.g. ViT-B-32")
    p.add_argument("--pretrained", default="openai", help="open_clip pretrained tag")
    p.add_argument("--image-size", type=int, default=None, help="checked against the model's input resolution")
    p.add_argument("--revision", default=None, help="hub revision of the weights repository")
    p.add_argument("--cache-dir", default=None, help="hub cache directory (default: HF_HOME's)")
    p.add_argument("--out", required=True, help="model directory")
    p.set_defaults(func=cmd_fetch_pretrained)

    p = sub.add_parser("install-pretrained", help="copy a shipped tiny θ_0 (checked against its recipe's sha256)")
    p.add_argument("--shipped", required=True, help="shipped directory: model.json, *.safetensors, recipe.json")
    p.add_argument("--out", required=True, help="model directory")
    p.set_defaults(func=cmd_install_pretrained)

    p = sub.add_parser("fetch-finetuned", help="download or copy one task's fine-tuned image encoder")
    p.add_argument("--source", type=_json_arg, required=True, help="JSON object: the config's `finetuned` block")
    p.add_argument("--model", required=True, help="open_clip model name, e.g. ViT-B-32")
    p.add_argument("--task", required=True)
    p.add_argument("--pretrained", required=True, help="θ_0 (pretrained.safetensors), to check keys and shapes")
    p.add_argument("--cache-dir", default=None, help="hub cache directory (default: HF_HOME's)")
    p.add_argument("--out", required=True, help="safetensors file; a JSON record of the source lands beside it")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.set_defaults(func=cmd_fetch_finetuned)

    p = sub.add_parser("pretrain", help="contrastively pre-train the embedded tiny CLIP")
    p.add_argument("--name", required=True, help="model name recorded in model.json")
    p.add_argument("--architecture", type=_json_arg, required=True, help="JSON object of the tiny architecture keys")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--images-per-task", type=int, required=True)
    p.add_argument("--caption-noise", type=float, default=0.0)
    p.add_argument("--domain-style", type=float, default=0.0, help="strength of each task's own look, 0-1")
    p.add_argument(
        "--data-seed", type=int, default=1000, help="seed of the pre-training images (distinct from the task splits)"
    )
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="model directory")
    _common(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("build-head", help="zero-shot head of one task from class names and templates")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data-dir", required=True, help="prepared task directory (its classnames.json)")
    p.add_argument(
        "--class-texts",
        choices=("data", "experts"),
        default="data",
        help="data: classnames.json's names; experts: the strings the experts' code formatted (real tasks)",
    )
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_build_head)

    p = sub.add_parser("finetune", help="fine-tune the image encoder on one task with its frozen head")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--head", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument(
        "--micro-batch-size", type=int, default=None, help="examples per pass; gradients accumulate to --batch-size"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--shipped",
        default=None,
        help="folder of shipped encoders (<task>.safetensors + <task>.json): copy this task's instead of "
        "fine-tuning when its recipe has these settings and the same θ_0, head and train split (sha256)",
    )
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_finetune)

    for name, func, help_text in (
        ("evaluate-reference", cmd_evaluate_reference, "zero-shot and individual fine-tuned accuracies per task"),
        ("merge-eval", cmd_merge_eval, "merge over a grid, select on val, evaluate test at the selected settings"),
    ):
        p = sub.add_parser(name, help=help_text)
        _evaluation_arguments(p)
        if name == "merge-eval":
            p.add_argument("--method", required=True)
            p.add_argument("--grid", type=_json_arg, default={}, help="JSON object: hyper-parameter → value or list")
            p.add_argument("--reference", required=True, help="CSV written by evaluate-reference")
            p.add_argument(
                "--factors", default=None, help="task factors from `mergeflow decompose` (cart, lowrank_ta, tsv_m)"
            )
        p.set_defaults(func=func)

    p = sub.add_parser("combine-sweep", help="join merge-eval tables of a rank sweep's parts, select on the whole grid")
    p.add_argument("--method", required=True)
    p.add_argument("--grid", type=_json_arg, required=True, help="JSON object: the method's whole grid")
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
    _common(p)
    p.set_defaults(func=cmd_decompose)

    from mergeflow.adaptive.cli import add_adaptive_commands
    from mergeflow.merging.cli import add_merge_command
    from mergeflow.report.cli import add_report_commands

    p = add_adaptive_commands(sub)
    _evaluation_arguments(p)
    p.add_argument("--reference", required=True, help="CSV written by evaluate-reference")
    add_merge_command(sub)
    p = sub.add_parser(
        "methods", help="list every merging method (static and test-time adaptive) with its settings and defaults"
    )
    p.set_defaults(func=cmd_methods)
    add_report_commands(sub)
    return parser


def _log_job_context() -> None:
    """Where this job runs, in its log: the host and, under a scheduler, the SLURM job."""
    import os
    import socket

    from mergeflow import launcher

    slurm_job = os.environ.get("SLURM_JOB_ID")
    if slurm_job:
        log.info("host %s, SLURM_JOB_ID=%s", socket.gethostname(), slurm_job)
    elif launcher.forked_by_server is not None:
        log.info(
            "host %s, forked by the mergeflow job server as pid %d (server pid %d)",
            socket.gethostname(),
            os.getpid(),
            launcher.forked_by_server,
        )
    else:
        log.info("host %s", socket.gethostname())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    _log_job_context()
    try:
        return int(args.func(args))
    except InputError as err:
        log.error("%s", err)
        return 2


def run() -> int:
    """The `mergeflow` console command: `main` in a process of its own.

    open_clip imports transformers (over a second of every job's start) only for Hugging Face text towers,
    which mergeflow never builds (`mergeflow.model.build_clip` refuses such configs), and no mergeflow code
    imports it; a command process is spared that import. `main` itself leaves the interpreter alone, as
    tests call it in a process that does use transformers.
    """
    sys.modules.setdefault("transformers", None)  # type: ignore[arg-type]
    return main()


if __name__ == "__main__":
    sys.exit(run())
