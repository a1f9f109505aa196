"""Model verbs: θ_0 (pre-train, install, download), the fine-tuned encoders (fetch, fine-tune, and one fine-tuned on
all tasks at once) and zero-shot heads."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mergeflow.commands.arguments import add_runtime_arguments, check_same_length, json_value
from mergeflow.commands.inputs import job_device
from mergeflow.io import InputError

if TYPE_CHECKING:
    from mergeflow.training.finetune import FinetuneSettings

log = logging.getLogger("mergeflow")


def register(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--source", type=json_value, required=True, help="JSON object: the config's `finetuned` block")
    p.add_argument("--model", required=True, help="open_clip model name, e.g. ViT-B-32")
    p.add_argument("--task", required=True)
    p.add_argument("--pretrained", required=True, help="θ_0 (pretrained.safetensors), to check keys and shapes")
    p.add_argument("--cache-dir", default=None, help="hub cache directory (default: HF_HOME's)")
    p.add_argument("--out", required=True, help="safetensors file; a JSON record of the source lands beside it")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.set_defaults(func=cmd_fetch_finetuned)

    p = sub.add_parser("pretrain", help="contrastively pre-train the embedded tiny CLIP")
    p.add_argument("--name", required=True, help="model name recorded in model.json")
    p.add_argument("--architecture", type=json_value, required=True, help="JSON object of the tiny architecture keys")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--images-per-task", type=int, required=True)
    p.add_argument("--caption-noise", type=float, default=0.0)
    p.add_argument("--domain-style", type=float, default=0.0, help="strength of each task's own look, 0-1")
    p.add_argument(
        "--data-seed", type=int, default=1000, help="seed of the pre-training images (distinct from the task splits)"
    )
    _add_training_arguments(p)
    p.add_argument("--out", required=True, help="model directory")
    add_runtime_arguments(p)
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
    add_runtime_arguments(p)
    p.set_defaults(func=cmd_build_head)

    p = sub.add_parser("finetune", help="fine-tune the image encoder on one task with its frozen head")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--head", required=True)
    p.add_argument("--data-dir", required=True)
    _add_training_arguments(p, grad_clip=True)
    p.add_argument(
        "--shipped",
        default=None,
        help="folder of shipped encoders (<task>.safetensors + <task>.json): copy this task's instead of "
        "fine-tuning when its recipe has these settings and the same θ_0, head and train split (sha256)",
    )
    p.add_argument("--out", required=True)
    add_runtime_arguments(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "finetune-multitask",
        help="fine-tune one image encoder on all tasks at once (the multi-task reference row) through their heads",
        description="The fine-tuning recipe on the union of the tasks' training examples: --steps per task, so "
        "len(--tasks) × --steps optimizer steps in all (mergeflow.training.multitask).",
    )
    p.add_argument("--model-dir", required=True)
    p.add_argument("--tasks", nargs="+", required=True, help="task names, in training order")
    p.add_argument("--heads", nargs="+", required=True, help="one head file per task, in --tasks order")
    p.add_argument("--data-dirs", nargs="+", required=True, help="one prepared task directory per task, same order")
    _add_training_arguments(p, grad_clip=True)
    p.add_argument(
        "--shipped",
        default=None,
        help="folder of shipped encoders: copy its multitask/<--out's name> (.safetensors + .json) instead of "
        "fine-tuning when its recipe has these settings and tasks and the same θ_0, heads' files and train splits",
    )
    p.add_argument("--out", required=True, help="safetensors file, named after the benchmark: <benchmark>.safetensors")
    add_runtime_arguments(p)
    p.set_defaults(func=cmd_finetune_multitask)


def _add_training_arguments(p: argparse.ArgumentParser, *, grad_clip: bool = False) -> None:
    """The optimisation flags pre-training and fine-tuning share (fine-tuning adds clipping and micro-batches)."""
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=0)
    if grad_clip:
        p.add_argument("--grad-clip", type=float, default=1.0)
        p.add_argument(
            "--micro-batch-size", type=int, default=None, help="examples per pass; gradients accumulate to --batch-size"
        )
    p.add_argument("--seed", type=int, default=0)


def cmd_fetch_pretrained(args: argparse.Namespace) -> int:
    from mergeflow.models.open_clip_hub import fetch_pretrained

    fetch_pretrained(
        args.model,
        args.pretrained,
        args.out,
        image_size=args.image_size,
        revision=args.revision,
        cache_dir=args.cache_dir,
    )
    return 0


def cmd_install_pretrained(args: argparse.Namespace) -> int:
    from mergeflow.shipped.theta0 import install_shipped

    install_shipped(args.shipped, args.out)
    log.info("installed the shipped θ_0 %s → %s (sha256 checked)", args.shipped, args.out)
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


def cmd_pretrain(args: argparse.Namespace) -> int:
    import torch

    from mergeflow.models.clip import build_clip, build_tokenizer, save_model_dir, tiny_clip_spec
    from mergeflow.tiny import TINY_TASKS, caption
    from mergeflow.tiny.splits import pretraining_pool
    from mergeflow.training.pretrain import PretrainSettings, contrastive_pretrain, noisy_captions

    device = job_device(args, args.seed)
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
    log.info("learned logit scale %.2f (clamped at 100)", float(clip.logit_scale.detach().exp()))
    save_model_dir(args.out, spec, clip.cpu())
    return 0


def cmd_build_head(args: argparse.Namespace) -> int:
    from mergeflow.data import load_classes
    from mergeflow.image_tasks.provenance import prepared_experts_class_texts
    from mergeflow.models.clip import build_tokenizer, load_clip
    from mergeflow.models.heads import save_head, zero_shot_head

    device = job_device(args)
    spec, clip = load_clip(args.model_dir)
    classes = load_classes(args.data_dir)
    task = Path(args.data_dir).name
    names, templates = classes.classnames, classes.templates
    if args.class_texts == "experts":
        names, templates = prepared_experts_class_texts(args.data_dir, len(names))
    head = zero_shot_head(clip.to(device), build_tokenizer(spec), names, templates, device)
    texts = args.class_texts if args.class_texts == "experts" else None
    save_head(args.out, head, clip.logit_scale.detach().cpu(), task=task, model=spec.name, class_texts=texts)
    log.info("head %s (%s class texts): %d classes × %d templates → %s", task, args.class_texts, len(names),
             len(templates), args.out)  # fmt: skip
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from mergeflow.data import check_head_fits, load_split
    from mergeflow.io import save_state_dict
    from mergeflow.models.clip import load_image_encoder, load_spec
    from mergeflow.models.heads import load_head
    from mergeflow.shipped.finetuned import install_if_same_recipe
    from mergeflow.training.finetune import finetune_image_encoder

    settings = _finetune_settings(args)
    head, logit_scale = load_head(args.head)
    check_head_fits(head, args.head, args.data_dir)
    images, labels = load_split(args.data_dir, "train")
    if args.shipped and install_if_same_recipe(args.shipped, settings.as_recipe(), args.model_dir, args.data_dir,
                                               args.out):  # fmt: skip
        return 0
    device = job_device(args, args.seed)
    spec = load_spec(args.model_dir)
    visual = load_image_encoder(args.model_dir)
    losses = finetune_image_encoder(
        visual, head, logit_scale, images, labels, spec, settings, device, progress=not args.no_progress
    )
    log.info("finetune loss: first %.4f, last %.4f over %d steps", losses[0], losses[-1], len(losses))
    save_state_dict(args.out, visual.cpu().state_dict(), {"model": spec.name, "task": Path(args.data_dir).name})
    return 0


def _finetune_settings(args: argparse.Namespace) -> FinetuneSettings:
    """The fine-tuning recipe of `finetune` and `finetune-multitask` (their shared training flags)."""
    from mergeflow.training.finetune import FinetuneSettings

    return FinetuneSettings(
        args.steps,
        args.batch_size,
        args.lr,
        args.weight_decay,
        args.warmup_steps,
        args.grad_clip,
        args.seed,
        micro_batch_size=args.micro_batch_size,
    )


def cmd_finetune_multitask(args: argparse.Namespace) -> int:
    from mergeflow.data import check_head_fits, load_split
    from mergeflow.io import save_state_dict
    from mergeflow.models.clip import load_image_encoder, load_spec
    from mergeflow.models.heads import load_head
    from mergeflow.shipped.finetuned import install_multitask_if_same_recipe
    from mergeflow.training.multitask import TrainingTask, finetune_multitask, multitask_steps

    settings = _finetune_settings(args)
    check_same_length(args, ["tasks", "heads", "data_dirs"])
    repeated = sorted({task for task in args.tasks if args.tasks.count(task) > 1})
    if repeated:
        raise InputError(f"--tasks: {repeated} given more than once; expected each task once")
    tasks = []
    for task, head_path, data_dir in zip(args.tasks, args.heads, args.data_dirs):
        head, logit_scale = load_head(head_path)
        check_head_fits(head, head_path, data_dir)
        tasks.append(TrainingTask(task, head, logit_scale, *load_split(data_dir, "train")))
    data_dirs = dict(zip(args.tasks, args.data_dirs))
    if args.shipped and install_multitask_if_same_recipe(args.shipped, settings.as_recipe(), args.model_dir,
                                                         data_dirs, args.out):  # fmt: skip
        return 0
    device = job_device(args, args.seed)
    spec = load_spec(args.model_dir)
    visual = load_image_encoder(args.model_dir)
    log.info("multi-task fine-tuning on %d tasks (%s): %d steps of %d examples from %d in all", len(tasks),
             ", ".join(args.tasks), multitask_steps(settings, len(tasks)), settings.batch_size,
             sum(len(task.labels) for task in tasks))  # fmt: skip
    losses = finetune_multitask(visual, tasks, spec, settings, device, progress=not args.no_progress)
    log.info("finetune-multitask loss: first %.4f, last %.4f over %d steps", losses[0], losses[-1], len(losses))
    save_state_dict(args.out, visual.cpu().state_dict(), {"model": spec.name, "tasks": " ".join(args.tasks)})
    return 0
