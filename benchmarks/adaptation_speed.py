"""Seconds per adaptation step and peak device memory of each test-time adaptive method, per model.

For each model (open_clip's architecture, random weights, θ_t = θ_0 + N(0, 0.001²)) and each method, one
in-process call of `mergeflow.adaptive.adapt` on `--tasks` tasks with 10-class heads, `--batch-size` unlabeled
224² images per task and step (the published 16), `--steps` Adam steps. The step time is the one `adapt`
logs (merge construction excluded); peak memory is `torch.cuda.max_memory_allocated` over the call, with the
inputs already on the device subtracted (the encoder: what an adapt-eval job holds besides its staged images).
A one-step ViT-B-32 run warms the device up first. The methods run at the paper configs' settings:
adamerging layer-wise; adamerging_cart and adarank (base cart) at rank 0.12 and λ (prior) 2.0, CART's
released setting.

    python benchmarks/adaptation_speed.py                               # on a GPU
    python benchmarks/adaptation_speed.py --models ViT-B-32 --tasks 2 --steps 1 --device cpu
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.modules.setdefault("transformers", None)  # type: ignore[arg-type]  (open_clip's HF text towers; unused)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from eval_throughput import machine, spec_of, write_report  # noqa: E402  (benchmarks/ is on sys.path)

from mergeflow.adaptive import AdaMergingCartSettings, AdaMergingSettings, AdaRankSettings, UnlabeledTask, adapt  # noqa: E402
from mergeflow.models.clip import build_clip  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
NUM_CLASSES = 10
IMAGES_PER_TASK = 64


def settings_for(method: str, steps: int, batch_size: int, bf16: bool):
    common = {"steps": steps, "batch_size": batch_size, "bf16_autocast": bf16}
    if method == "adamerging":
        return AdaMergingSettings(granularity="layer", **common)
    if method == "adamerging_cart":
        return AdaMergingCartSettings(rank=0.12, lam=2.0, **common)
    return AdaRankSettings(base="cart", initial_rank=0.12, prior=2.0, **common)


class StepTimes(logging.Handler):
    """Keeps the (build seconds, steps, step seconds) that `adapt` logs."""

    def __init__(self) -> None:
        super().__init__()
        self.last: tuple[float, int, float] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if "steps in" in record.msg and record.args:
            _, build, steps, seconds, _ = record.args
            self.last = (float(build), int(steps), float(seconds))


def one_case(model: str, method: str, tasks: int, steps: int, batch_size: int, bf16: bool, device, timer: StepTimes):
    torch.manual_seed(0)
    spec = spec_of(model)
    visual = build_clip(spec).visual
    pretrained = {key: value.detach().clone() for key, value in visual.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    finetuned = [{k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in pretrained.items()}
                 for _ in range(tasks)]  # fmt: skip
    embed_dim = int(spec.open_clip_config["embed_dim"])
    rng = np.random.default_rng(0)
    unlabeled = [
        UnlabeledTask(f"task{index}", rng.integers(0, 256, size=(IMAGES_PER_TASK, spec.image_size, spec.image_size, 3),
                      dtype=np.uint8), F.normalize(torch.randn(NUM_CLASSES, embed_dim, generator=generator), dim=-1),
                      torch.tensor(4.6052))
        for index in range(tasks)
    ]  # fmt: skip
    visual = visual.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    adapt(visual, spec, pretrained, finetuned, unlabeled, settings_for(method, steps, batch_size, bf16), device,
          progress=False)  # fmt: skip
    wall = time.perf_counter() - started
    build, done, seconds = timer.last
    row = {"model": model, "method": method, "bf16_autocast": bf16, "tasks": tasks, "batch_per_task": batch_size,
           "steps": done, "build_s": build, "seconds_per_step": seconds / max(1, done), "wall_s": wall}  # fmt: skip
    if device.type == "cuda":
        row["peak_gib"] = (torch.cuda.max_memory_allocated(device) - held) / 2**30
    del visual
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-B-16", "ViT-L-14"])
    parser.add_argument("--methods", nargs="+", default=["adamerging", "adamerging_cart", "adarank"])
    parser.add_argument("--bf16", action="store_true", help="also run adamerging with bf16_autocast (CUDA)")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=OUT / "adaptation_speed.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    timer = StepTimes()
    logging.getLogger("mergeflow.adaptive.adaptation").addHandler(timer)
    logging.getLogger("mergeflow.adaptive.adaptation").setLevel(logging.INFO)
    report = {"machine": machine(device), "rows": []}
    print(f"machine: {report['machine']}")
    one_case("ViT-B-32", "adamerging", 1, 1, args.batch_size, False, device, timer)
    print(f"{args.tasks} tasks × {args.batch_size} images per step, {args.steps} steps, random weights\n")
    print("| model | method | autocast | s per step | merge build s | peak device GiB above the encoder |")
    print("|---|---|---|---|---|---|")
    variants = [(method, False) for method in args.methods]
    if args.bf16 and device.type == "cuda" and "adamerging" in args.methods:
        variants.insert(args.methods.index("adamerging") + 1, ("adamerging", True))
    cases = [(model, method, bf16) for model in args.models for method, bf16 in variants]
    for model, method, bf16 in cases:
        try:
            row = one_case(model, method, args.tasks, args.steps, args.batch_size, bf16, device, timer)
        except Exception as err:  # one case's failure (say, out of memory) still lets the others report
            print(f"| {model} | {method} | {'bf16' if bf16 else 'fp32'} | failed: {err!r} | | |", flush=True)
            continue
        report["rows"].append(row)
        write_report(args.out, report)  # after every case: a run stopped at its time limit keeps what it measured
        peak = f"{row['peak_gib']:.2f}" if "peak_gib" in row else "n/a (CPU)"
        print(f"| {model} | {method} | {'bf16' if bf16 else 'fp32'} | {row['seconds_per_step']:.3f} | "
              f"{row['build_s']:.2f} | {peak} |", flush=True)  # fmt: skip
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
