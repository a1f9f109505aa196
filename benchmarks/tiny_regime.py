"""Is a tiny θ_0 in the papers' regime? Zero-shot over chance per task, and how strong a fine-tuned expert gets.

Both probes score a *design split*: images of the task drawn with their own seed (--design-seed, 500 by
default), in the task's look plus the task-split shift, and never the test split, so no setting chosen with
them has seen a test label. Every other flag defaults to the default config's value (config/config.yaml: its
tasks, data.* and finetune.*).

    python benchmarks/tiny_regime.py zeroshot results/models/tiny-clip
    python benchmarks/tiny_regime.py zeroshot results/models/tiny-clip --shift 0.2   # another shift
    python benchmarks/tiny_regime.py finetune results/models/tiny-clip --tasks shapes digits \\
        --steps 1000 --lr 3e-4 --train-size 10000

`zeroshot` prints per task the accuracy, its multiple of chance (1 / classes), the mean and largest cosine
between two classes' head rows (near 1: the text tower cannot tell the class names apart) and the share of
predictions that go to the most predicted class. `finetune` fine-tunes each task from θ_0 with the workflow's
own code (`mergeflow.training.finetune`, warm-up 6% of the steps, weight decay 0.1, clipping at 1) on the
task's training split drawn with --data-seed, and prints design-split and training accuracy and how far the
weight matrices moved, ‖θ_t − θ_0‖ / ‖θ_0‖.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mergeflow.evaluation.accuracy import accuracy, predict
from mergeflow.models.clip import ModelSpec, build_tokenizer, load_clip
from mergeflow.models.heads import zero_shot_head
from mergeflow.tiny import TINY_TASKS
from mergeflow.tiny.splits import task_splits
from mergeflow.training.finetune import FinetuneSettings, finetune_image_encoder

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
CPU = torch.device("cpu")
BATCH_SIZE = 256


def design_split(task: str, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    _, (images, labels) = task_splits(task, 0, args.design_size, args.image_size, args.design_seed,
                                      style=args.style, shift=args.shift)  # fmt: skip
    return images, labels


def task_head(clip: torch.nn.Module, spec: ModelSpec, task: str) -> torch.Tensor:
    with torch.no_grad():
        return zero_shot_head(clip, build_tokenizer(spec), TINY_TASKS[task].classnames, TINY_TASKS[task].templates, CPU)


def zeroshot(args: argparse.Namespace) -> None:
    spec, clip = load_clip(args.model_dir)
    clip.eval()
    print(f"{args.model_dir}: learned temperature exp(logit_scale) {float(clip.logit_scale.detach().exp()):.2f}")
    ratios = []
    for task in args.tasks:
        images, labels = design_split(task, args)
        head = task_head(clip, spec, task)
        predicted = predict(clip.visual, head, images, spec, CPU, BATCH_SIZE)
        classes = len(TINY_TASKS[task].classnames)
        percent = 100.0 * (predicted == labels).mean()
        ratios.append(percent * classes / 100.0)
        cosines = (head @ head.t())[~torch.eye(classes, dtype=torch.bool)]  # rows are unit vectors
        top_share = np.bincount(predicted, minlength=classes).max() / len(predicted)
        print(f"{task:12s} {classes:2d} classes: {percent:5.1f}% = {ratios[-1]:.2f}x chance; head cosine mean "
              f"{cosines.mean():.3f}, max {cosines.max():.3f}; top-class share {top_share:.2f}")  # fmt: skip
    print(f"weakest: {min(ratios):.2f}x chance")


def relative_move(theta_0: dict[str, torch.Tensor], theta: dict[str, torch.Tensor]) -> float:
    """‖θ − θ_0‖ / ‖θ_0‖ over the weight matrices, the ones merging methods treat as matrices."""
    keys = [key for key, value in theta_0.items() if value.ndim == 2]
    moved = torch.cat([(theta[key] - theta_0[key]).flatten() for key in keys])
    return float(moved.norm() / torch.cat([theta_0[key].flatten() for key in keys]).norm())


def finetune(args: argparse.Namespace) -> None:
    for task in args.tasks:
        spec, clip = load_clip(args.model_dir)
        clip.eval()
        head = task_head(clip, spec, task)
        (train, train_labels), _ = task_splits(task, args.train_size, 0, args.image_size, args.data_seed,
                                               style=args.style, shift=args.shift)  # fmt: skip
        settings = FinetuneSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=0.1,
                                    warmup_steps=max(1, args.steps * 6 // 100), grad_clip=1.0, seed=0)  # fmt: skip
        theta_0 = {key: value.clone() for key, value in clip.visual.state_dict().items()}
        start = time.perf_counter()
        finetune_image_encoder(
            clip.visual, head, clip.logit_scale.detach(), train, train_labels, spec, settings, CPU, progress=False
        )
        seconds = time.perf_counter() - start
        images, labels = design_split(task, args)
        design = 100.0 * accuracy(clip.visual, head, images, labels, spec, CPU, BATCH_SIZE)
        seen = 100.0 * accuracy(clip.visual, head, train[:500], train_labels[:500], spec, CPU, BATCH_SIZE)
        print(f"{task:12s} {args.steps} steps, lr {args.lr:g}, {args.train_size} images: design {design:5.1f}%, "
              f"train {seen:5.1f}%, ||τ||/||θ_0|| {relative_move(theta_0, clip.visual.state_dict()):.3f} "
              f"({seconds:.0f} s)", flush=True)  # fmt: skip


def main() -> None:
    default = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data, recipe = default["data"], default["finetune"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=("zeroshot", "finetune"))
    parser.add_argument("model_dir")
    parser.add_argument("--tasks", nargs="+", default=default["tasks"])
    parser.add_argument("--shift", type=float, default=data["split_shift"], help="data.split_shift of the splits")
    parser.add_argument("--style", type=float, default=data["domain_style"], help="data.domain_style")
    parser.add_argument("--image-size", type=int, default=default["model"]["architecture"]["image_size"])
    parser.add_argument("--design-seed", type=int, default=500)
    parser.add_argument("--design-size", type=int, default=500)
    parser.add_argument("--data-seed", type=int, default=data["seed"], help="seed of the training split (finetune)")
    parser.add_argument("--train-size", type=int, default=data["train_size"])
    parser.add_argument("--steps", type=int, default=recipe["steps"])
    parser.add_argument("--batch-size", type=int, default=recipe["batch_size"])
    parser.add_argument("--lr", type=float, default=recipe["lr"])
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.probe == "zeroshot":
        zeroshot(args)
    else:
        finetune(args)


if __name__ == "__main__":
    main()
