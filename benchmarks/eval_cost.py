"""GPU hours of every paper config, from the pass counts its grids imply and the rates measured on a GPU.

Passes are counted as the pipeline runs them: `evaluate_reference` makes two val and two test passes
(zero-shot on every task; each fine-tuned model on its own task), and each `merge_eval` job one val pass
per grid point, then one test pass per selected setting (one, or one per rank of a rank sweep); an
`adapt_eval` job one of each after its adaptation steps. A pass covers every task's split: val is
min(5000, 10% of the training split), test the test split, with the split sizes below.

The hours come from measurements on one GPU (`--measured`, a folder written by benchmarks/gpu_checks.sh):
- a pass of N images costs N / r(model), r being eval_throughput.py's (a) rate, our evaluation path with
  the images resident on the GPU, plus s for every image streamed from host memory: under
  `evaluation.resident_mb` every val split is staged first, then the test splits, and the rest is read per
  batch. s is calibrated on gpu_sweep.py's real merge-eval test pass (ViT-B-32, 8 tasks, default budget);
- an adaptation step costs what adaptation_speed.py measured for the model and method at 8 tasks × 16 images,
  scaled by tasks / 8 (a step's work is one forward and backward pass of tasks × 16 images). Where a pair was
  not measured, the model's adamerging step times that method's ratio to adamerging on the largest model
  measured with it (listed under the table).
Not counted: merges and SVDs (0.2-0.6 s per merge direction on ViT-B-32), job start-up and model loading
(about 20 s per ViT-B-32 × 8 job), downloads and data preparation.

    python benchmarks/eval_cost.py                  # markdown table for README
    python benchmarks/eval_cost.py --measured benchmarks/results/h200-2026-12-04
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from mergeflow.adaptive.settings import SETTINGS_CLASSES, is_adaptive
from mergeflow.dag.resources import grid_points
from mergeflow.evaluation.accuracy import EvalSettings
from mergeflow.image_tasks.provenance import prepared_split_sizes
from mergeflow.image_tasks.registry import TASKS_20
from mergeflow.merging.entries import base_method

REPO = Path(__file__).resolve().parents[1]
MEASURED = REPO / "benchmarks" / "results" / "h200-2026-12-04"
IMAGE_BYTES = 224 * 224 * 3  # one stored uint8 image at the paper models' input size
MEASURED_TASKS = 8  # adaptation_speed.py's default

# (val, test) images per task as the paper configs prepare them (mergeflow.image_tasks.provenance).
SPLIT_SIZES: dict[str, tuple[int, int]] = {
    task: (sizes["val"], sizes["test"]) for task in TASKS_20 for sizes in [prepared_split_sizes(task)]
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


def adaptation_steps(config: dict) -> dict[str, int]:
    """Adam steps of every adaptive entry of a config (its setting, else the method's published default)."""
    steps = {}
    for entry, settings in config["methods"].items():
        if is_adaptive(entry):
            default = SETTINGS_CLASSES[base_method(entry)].__dataclass_fields__["steps"].default
            steps[entry] = int(settings.get("steps", default))
    return steps


def split_images(tasks: list[str]) -> tuple[list[int], list[int]]:
    """Images of each task's val split and of each test split."""
    return [SPLIT_SIZES[t][0] for t in tasks], [SPLIT_SIZES[t][1] for t in tasks]


def streamed_images(val: list[int], test: list[int], resident_mb: float) -> tuple[int, int]:
    """Images of a val pass and of a test pass read from host memory per batch (evaluation.accuracy.stage_splits)."""
    budget, used = resident_mb * 2**20, 0
    streamed = []
    for images in val + test:
        size = images * IMAGE_BYTES
        resident = used + size <= budget
        used += size if resident else 0
        streamed.append(0 if resident else images)
    return sum(streamed[: len(val)]), sum(streamed[len(val) :])


class MeasuredRates:
    """What one GPU measured: evaluation images/s per model, the cost of a streamed image, adaptation steps."""

    def __init__(self, folder: Path) -> None:
        throughput = json.loads((folder / "eval_throughput.json").read_text())
        self.machine = throughput["machine"]
        self.images_per_s = {row["model"]: row["ours"] for row in throughput["rows"]}
        sweep = json.loads((folder / "gpu_sweep.json").read_text())
        val, test = split_images(sweep["tasks"])
        _, streamed = streamed_images(val, test, EvalSettings().resident_mb)
        resident_s = sweep["test"]["images"] / self.images_per_s[sweep["model"]]
        self.streamed_s = (sweep["test"]["median_s"] - resident_s) / streamed
        adaptation = json.loads((folder / "adaptation_speed.json").read_text())["rows"]
        self.step_s = {(r["model"], r["method"]): r["seconds_per_step"] for r in adaptation if not r["bf16_autocast"]}
        self.estimated: set[tuple[str, str]] = set()

    def pass_s(self, model: str, images: int, streamed: int) -> float:
        return images / self.images_per_s[model] + streamed * self.streamed_s

    def adaptation_step_s(self, model: str, method: str, tasks: int) -> float:
        if (model, method) not in self.step_s:
            self.estimated.add((model, method))
            measured = [m for m in self.images_per_s if (m, method) in self.step_s and (m, "adamerging") in self.step_s]
            largest = min(measured, key=lambda m: self.images_per_s[m])
            ratio = self.step_s[(largest, method)] / self.step_s[(largest, "adamerging")]
            return self.step_s[(model, "adamerging")] * ratio * tasks / MEASURED_TASKS
        return self.step_s[(model, method)] * tasks / MEASURED_TASKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measured", type=Path, default=MEASURED, help="folder of gpu_checks.sh's JSON results")
    args = parser.parse_args(argv)
    rates = MeasuredRates(args.measured)
    print("| config | val passes | test passes | val images/pass | test images/pass | images evaluated "
          "| streamed share | evaluation GPU h | adaptation steps | adaptation GPU h | GPU hours |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    paths = (REPO / "config" / "paper").glob("*.yaml")
    configs = [yaml.safe_load(path.read_text()) | {"file": path.stem} for path in paths]
    configs.sort(key=lambda c: (list(ARCHITECTURES).index(c["model"]["open_clip"]["name"]), len(c["tasks"])))
    for config in configs:
        model, tasks = config["model"]["open_clip"]["name"], config["tasks"]
        val_passes, test_passes = passes(config)
        val, test = split_images(tasks)
        budget = config.get("evaluation", {}).get("resident_mb", EvalSettings().resident_mb)
        val_streamed, test_streamed = streamed_images(val, test, budget)
        total = val_passes * sum(val) + test_passes * sum(test)
        streamed = val_passes * val_streamed + test_passes * test_streamed
        evaluation_h = (val_passes * rates.pass_s(model, sum(val), val_streamed)
                        + test_passes * rates.pass_s(model, sum(test), test_streamed)) / 3600  # fmt: skip
        steps = adaptation_steps(config)
        adaptation_h = sum(n * rates.adaptation_step_s(model, base_method(e), len(tasks)) for e, n in steps.items())
        adaptation_h /= 3600
        print(f"| {config['file']} | {val_passes} | {test_passes} | {sum(val):,} | {sum(test):,} "
              f"| {total / 1e6:.1f} M | {100 * streamed / total:.0f}% | {evaluation_h:.2f} "
              f"| {' + '.join(str(n) for n in steps.values())} | {adaptation_h:.2f} "
              f"| {evaluation_h + adaptation_h:.2f} |")  # fmt: skip
    print(f"\nMeasured on {rates.machine}: evaluation "
          + ", ".join(f"{m} {r:,.0f} images/s" for m, r in rates.images_per_s.items())
          + f" (fp16, resident), {1e6 * rates.streamed_s:.0f} µs more per streamed image.")  # fmt: skip
    if rates.estimated:
        print("Adaptation steps not measured, estimated from the method's ratio to adamerging: "
              + ", ".join(f"{model} {method}" for model, method in sorted(rates.estimated)) + ".")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
