"""Evaluation cost of every paper config: passes its grids imply, images per pass, projected GPU hours.

Passes are counted as the pipeline runs them: `evaluate_reference` makes two val and two test passes
(zero-shot on every task; each fine-tuned model on its own task), and each `merge_eval` job one val pass
per grid point, then one test pass per selected setting (one, or one per rank of a rank sweep). A pass
covers every task's split: val is min(5000, 10% of the training split), test the test split, with the
split sizes below. Forward FLOPs per image come from the architecture (multiply-accumulates × 2).
GPU hours are projected at an assumed sustained throughput (`--tflops`), not measured.

    python benchmarks/eval_cost.py                  # markdown table for README
    python benchmarks/eval_cost.py --tflops 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from mergeflow.adaptive.settings import SETTINGS_CLASSES
from mergeflow.job_resources import grid_points
from mergeflow.method_entries import base_method, is_adaptive

REPO = Path(__file__).resolve().parents[1]

# (train, test) examples per task, as the configured sources serve them; see benchmarks/README.md for sources.
SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "SUN397": (19850, 19850),
    "Cars": (8144, 8041),
    "RESISC45": (18900, 6300),
    "EuroSAT": (21600, 2700),
    "SVHN": (73257, 26032),
    "GTSRB": (26640, 12630),
    "MNIST": (60000, 10000),
    "DTD": (3760, 1880),
    "CIFAR100": (50000, 10000),
    "STL10": (5000, 8000),
    "Flowers102": (1020, 6149),
    "OxfordIIITPet": (3680, 3669),
    "PCAM": (262144, 32768),
    "FER2013": (28709, 7178),
    "EMNIST": (240000, 40000),
    "CIFAR10": (50000, 10000),
    "Food101": (75750, 25250),
    "FashionMNIST": (60000, 10000),
    "RenderedSST2": (6920, 1821),
    "KMNIST": (60000, 10000),
}

# open_clip image towers: (width, layers, patch, image size, output dim)
ARCHITECTURES = {"ViT-B-32": (768, 12, 32, 224, 512), "ViT-B-16": (768, 12, 16, 224, 512),
                 "ViT-L-14": (1024, 24, 14, 224, 768)}  # fmt: skip


def forward_gflops(model: str) -> float:
    """Forward FLOPs of one image: patch embedding, attention and MLP blocks, projection (2 × MACs)."""
    width, layers, patch, size, out = ARCHITECTURES[model]
    patches = (size // patch) ** 2
    tokens = patches + 1
    block = 12 * tokens * width**2 + 2 * tokens**2 * width  # qkv, out-proj and 4× MLP; QKᵀ and AV
    macs = layers * block + patches * 3 * patch**2 * width + width * out
    return 2 * macs / 1e9


def passes(config: dict) -> tuple[int, int]:
    """(val passes, test passes) of evaluate_reference and every merge_eval and adapt_eval job of a config."""
    val, test = 2, 2
    for entry, grid in config["methods"].items():
        adaptive = is_adaptive(entry)
        val += 1 if adaptive else grid_points(grid)
        ranks = grid.get("rank")
        test += len(ranks) if isinstance(ranks, list) and not adaptive else 1
    return val, test


def adaptation_images(config: dict) -> int:
    """Forward-pass equivalents of every adapt_eval job: steps × tasks × batch, × 3 for forward and backward."""
    total = 0
    for entry, settings in config["methods"].items():
        if is_adaptive(entry):
            steps = settings.get("steps", SETTINGS_CLASSES[base_method(entry)].__dataclass_fields__["steps"].default)
            total += 3 * steps * len(config["tasks"]) * settings.get("batch_size", 16)
    return total


def images_per_pass(tasks: list[str]) -> tuple[int, int]:
    val = sum(min(5000, int(0.1 * SPLIT_SIZES[t][0])) for t in tasks)
    return val, sum(SPLIT_SIZES[t][1] for t in tasks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflops", type=float, default=200.0, help="assumed sustained TFLOP/s of one GPU")
    args = parser.parse_args(argv)
    print("| config | val passes | test passes | val images/pass | test images/pass | images evaluated "
          "| adaptation (forward-equivalent images) | GFLOP/image | projected GPU hours |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    paths = (REPO / "config" / "paper").glob("*.yaml")
    configs = [yaml.safe_load(path.read_text()) | {"file": path.stem} for path in paths]
    configs.sort(key=lambda c: (list(ARCHITECTURES).index(c["model"]["open_clip"]["name"]), len(c["tasks"])))
    for config in configs:
        model = config["model"]["open_clip"]["name"]
        val_passes, test_passes = passes(config)
        val_images, test_images = images_per_pass(config["tasks"])
        total = val_passes * val_images + test_passes * test_images
        adaptation = adaptation_images(config)
        hours = (total + adaptation) * forward_gflops(model) / (args.tflops * 1e3) / 3600
        print(f"| {config['file']} | {val_passes} | {test_passes} | {val_images:,} | {test_images:,} "
              f"| {total / 1e6:.1f} M | {adaptation / 1e6:.1f} M | {forward_gflops(model):.1f} "
              f"| {hours:.2f} |")  # fmt: skip
    print(f"\nGPU hours at an assumed {args.tflops:g} TFLOP/s sustained (projected from FLOPs, not measured).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
