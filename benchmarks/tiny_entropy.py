"""Does low prediction entropy mean a right prediction on tiny8? The premise of entropy-based adaptation.

For every seed of `tiny_seeds.py` and every merge, the test images of each task are scored with the merged
encoder and the task's frozen zero-shot head. Printed per merge, as mean ± sd over seeds of the average
over tasks:

- accuracy of the half of the images with the lowest entropy, and of the half with the highest
  (AdaMerging's premise: the confident half is the more accurate one);
- mean entropy per image;
- top-class share: the fraction of predictions that go to the most predicted class (1/C for balanced
  predictions, 1 for a collapse onto one class), beside the same share of the true labels.

Merges: CART at its val-selected setting (where AdaMerging + CART and AdaRank start), task arithmetic at
λ 0.3 (where AdaMerging starts), and each adaptive method's learned merge from `tiny_adaptation.py`'s
output for --steps and --lr. Labels are read here only to measure; nothing is selected with them.

    python benchmarks/tiny_adaptation.py --steps 500 --lrs 0.001      # first, for the learned merges
    python benchmarks/tiny_entropy.py --steps 500 --lr 0.001
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from mergeflow.adaptive import load_learned_merge, merge_from_learned
from mergeflow.data import load_split
from mergeflow.io import load_state_dict
from mergeflow.merging import merge_state_dicts
from mergeflow.models.clip import images_to_tensor, load_image_encoder, load_spec, pretrained_path
from mergeflow.models.heads import head_logits, load_head

REPO = Path(__file__).resolve().parents[1]
SEEDS_DIR = REPO / "benchmarks" / "out" / "seeds"
ADAPTATION_DIR = REPO / "benchmarks" / "out" / "adaptation"
ADAPTIVE = ("adamerging", "adamerging_cart", "adarank")


@torch.no_grad()
def task_logits(visual: torch.nn.Module, spec, head_file: Path, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    head, scale = load_head(str(head_file))
    parts = [
        head_logits(visual(images_to_tensor(np.array(images[i : i + batch]), spec, torch.device("cpu"))), head, scale)
        for i in range(0, len(images), batch)
    ]
    return torch.cat(parts)


def scores(logits: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    log_probs = logits.log_softmax(dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1).numpy()
    predicted = logits.argmax(dim=-1).numpy()
    correct = predicted == labels
    order = np.argsort(entropy, kind="stable")
    half = len(order) // 2
    return {
        "confident half": 100 * correct[order[:half]].mean(),
        "uncertain half": 100 * correct[order[half:]].mean(),
        "entropy": float(entropy.mean()),
        "top-class share": float(np.bincount(predicted).max() / len(predicted)),
        "label top-class share": float(np.bincount(labels).max() / len(labels)),
    }


def merges(suite: Path, config: Mapping, seed: int, steps: int, lr: float) -> dict[str, dict]:
    results, model = suite / "results", config["model"]["name"]
    pretrained = load_state_dict(pretrained_path(results / "models" / model))
    finetuned = [load_state_dict(results / "finetuned" / model / f"{t}.safetensors") for t in config["tasks"]]
    cart = pd.read_csv(results / config["benchmark"] / model / "eval" / "cart.csv")
    chosen = json.loads(cart[(cart["split"] == "test") & cart["best"]]["setting"].iloc[0])
    found = {
        f"CART {chosen}": merge_state_dicts("cart", pretrained, finetuned, chosen),
        "task arithmetic λ 0.3": merge_state_dicts("task_arithmetic", pretrained, finetuned, {"lam": 0.3}),
    }
    for method in ADAPTIVE:
        learned = ADAPTATION_DIR / f"{config['benchmark']}-seed{seed}" / f"{method}-lr{lr}-steps{steps}"
        if (learned / "learned.safetensors").is_file():
            merge = load_learned_merge(learned / "learned.safetensors")
            found[f"{method}, {steps} steps"] = merge_from_learned(merge, pretrained, finetuned)
    return found


def mean_sd(values: Sequence[float], digits: int) -> str:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = yaml.safe_load(args.config.read_text())
    rows = []
    for seed in args.seeds:
        suite = SEEDS_DIR / f"{config['benchmark']}-seed{seed}"
        results, model = suite / "results", config["model"]["name"]
        spec = load_spec(results / "models" / model)
        for name, state in merges(suite, config, seed, args.steps, args.lr).items():
            visual = load_image_encoder(results / "models" / model, state).eval()
            per_task = []
            for task in config["tasks"]:
                images, labels = load_split(results / "data" / task, "test")
                logits = task_logits(visual, spec, results / "heads" / model / f"{task}.safetensors", images)
                per_task.append(scores(logits, np.asarray(labels)))
            averaged = pd.DataFrame(per_task).mean()
            rows.append({"seed": seed, "merge": name.split(" {")[0], **averaged.to_dict()})
    frame = pd.DataFrame(rows)
    columns = ["confident half", "uncertain half", "entropy", "top-class share", "label top-class share"]
    print(f"{config['benchmark']}, seeds {args.seeds}; test split, average over tasks, mean ± sd over seeds\n")
    print("| merge | accuracy, confident half | accuracy, uncertain half | entropy | top-class share | of the labels |")
    print("|---|---|---|---|---|---|")
    for merge, group in frame.groupby("merge", sort=False):
        cells = [mean_sd(list(group[c]), 1 if "half" in c else 2) for c in columns]
        print(f"| {merge} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
