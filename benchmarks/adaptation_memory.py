"""Peak memory of test-time adaptation on ViT-L/14 geometry with many tasks, projected to the full depth.

Each case runs one Adam step of `mergeflow.adaptive.adapt` in a fresh Python subprocess on the CPU, with
random weights (θ_t = θ_0 + noise), 224-pixel uint8 images and 10-class heads, at the published batch of
16 images per task. Its peak RSS is the child's own `ru_maxrss` (read with `os.wait4`). An `inputs` child
builds the same encoder, θ_0, θ_t and images and stops there, so

  adaptation = peak RSS of the case − peak RSS of `inputs`

is what adaptation adds: the method's merge (static merge and per-task directions, also counted exactly
from its tensors), the merged weights, their gradients and the activations of the images in one pass.

Every component grows linearly with the number of residual blocks, so the figures are measured at two
reduced depths and projected to ViT-L/14's 24 blocks: value(24) = value(d1) + (24 − d1)·per-block, with
per-block = (value(d2) − value(d1)) / (d2 − d1). Methods: adamerging (layer-wise, dense task vectors),
adamerging_cart (rank ρ) and adarank (base cart, full thin SVD); a case is method:tasks_per_pass, with
`all` for every task in one pass. The activations do not depend on the method, so the default cases pass
all tasks at once only for adamerging_cart.

    python benchmarks/adaptation_memory.py --tasks 20 --depths 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

from child_process import measure_child  # benchmarks/ is on sys.path

FULL_DEPTH = 24
NUM_CLASSES = 10


def vision_config(layers: int) -> tuple[dict[str, Any], int]:
    """open_clip's ViT-L-14 image tower with `layers` residual blocks."""
    import open_clip

    config = open_clip.get_model_config("ViT-L-14")
    return {**config["vision_cfg"], "layers": layers}, config["embed_dim"]


def build_inputs(case: dict[str, Any]):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from open_clip.model import _build_vision_tower

    from mergeflow.adaptive import UnlabeledTask
    from mergeflow.models.clip import OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD, ModelSpec

    torch.manual_seed(0)
    vision, embed_dim = vision_config(case["layers"])
    visual = _build_vision_tower(embed_dim, vision, quick_gelu=False)
    for parameter in visual.parameters():
        parameter.requires_grad_(False)
    spec = ModelSpec("ViT-L-14", {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": {}},
                     OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD)  # fmt: skip
    pretrained = {key: value.detach().clone() for key, value in visual.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    finetuned = [
        {key: value + 1e-3 * torch.randn(value.shape, generator=generator) for key, value in pretrained.items()}
        for _ in range(case["tasks"])
    ]
    rng = np.random.default_rng(0)
    size = vision["image_size"]
    tasks = [
        UnlabeledTask(
            f"task{index}",
            rng.integers(0, 256, size=(case["batch_size"], size, size, 3), dtype=np.uint8),
            F.normalize(torch.randn(NUM_CLASSES, embed_dim, generator=generator), dim=-1),
            torch.tensor(4.6052),
        )
        for index in range(case["tasks"])
    ]
    return visual, spec, pretrained, finetuned, tasks


def settings_of(case: dict[str, Any]):
    from mergeflow.adaptive import AdaMergingCartSettings, AdaMergingSettings, AdaRankSettings

    common = {"steps": 1, "batch_size": case["batch_size"], "tasks_per_pass": case["tasks_per_pass"]}
    if case["method"] == "adamerging":
        return AdaMergingSettings(granularity="layer", **common)
    if case["method"] == "adamerging_cart":
        return AdaMergingCartSettings(rank=case["rank"], lam=1.5, **common)
    return AdaRankSettings(base="cart", initial_rank=case["rank"], prior=1.5, **common)


def merge_bytes(merge) -> int:
    """Bytes of the static merge and every term's tensors (what the method keeps for all of adaptation)."""
    from mergeflow.adaptive.terms import DenseTerm

    total = sum(tensor.numel() * tensor.element_size() for tensor in merge.static.values())
    for term in merge.terms.values():
        tensors = (term.vectors,) if isinstance(term, DenseTerm) else (term.left, term.right, term.singular_values)
        total += sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    return total


def run_case(case: dict[str, Any]) -> None:
    """Child side: build the inputs and, unless this is the `inputs` case, adapt one step; print JSON."""
    import torch

    from mergeflow.adaptive import adapt

    visual, spec, pretrained, finetuned, tasks = build_inputs(case)
    result: dict[str, Any] = {"threads": torch.get_num_threads()}
    if case["method"] != "inputs":
        started = time.perf_counter()
        adapted = adapt(visual, spec, pretrained, finetuned, tasks, settings_of(case), progress=False)
        result["seconds"] = time.perf_counter() - started
        result["merge_mib"] = merge_bytes(adapted.merge) / 2**20
    print(json.dumps(result))


def measure(case: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run one case in a fresh interpreter; return its JSON result and peak RSS (MiB)."""
    return measure_child(__file__, case, threads)


def projected(values: dict[int, float], depths: tuple[int, int]) -> float:
    low, high = depths
    per_block = (values[high] - values[low]) / (high - low)
    return values[low] + (FULL_DEPTH - low) * per_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, default=20, help="tasks (20)")
    parser.add_argument("--depths", type=int, nargs=2, default=(1, 2), help="the two measured depths (1 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="unlabeled images per task and step (16)")
    parser.add_argument("--rank", type=float, default=0.32, help="adamerging_cart's rank, adarank's initial rank")
    parser.add_argument(
        "--cases",
        default="adamerging_cart:all,adamerging_cart:1,adamerging:1,adarank:1",
        help="comma-separated method:tasks_per_pass (an integer, or all)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP threads per child")
    args = parser.parse_args()
    if args.child:
        run_case(json.loads(args.child))
        return
    depths = tuple(sorted(args.depths))
    if depths[0] == depths[1] or depths[0] < 1:
        parser.error("--depths: two different depths >= 1")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    print(f"command: {' '.join(sys.argv)}\n")
    common = {"tasks": args.tasks, "batch_size": args.batch_size, "rank": args.rank, "tasks_per_pass": None}
    inputs = {depth: measure({**common, "method": "inputs", "layers": depth}, args.threads) for depth in depths}
    inputs_mib = {depth: result["peak_rss_mib"] for depth, result in inputs.items()}
    print(f"inputs (encoder, θ_0, {args.tasks} θ_t, images): peak RSS "
          + ", ".join(f"{inputs_mib[d]:.0f} MiB at {d} blocks" for d in depths)
          + f"; projected to {FULL_DEPTH} blocks {projected(inputs_mib, depths) / 1024:.1f} GiB\n")  # fmt: skip
    print(f"ViT-L/14 geometry, {args.tasks} tasks, {args.batch_size} images per task, one Adam step; "
          f"GiB projected to {FULL_DEPTH} blocks from {depths[0]} and {depths[1]}\n")  # fmt: skip
    print("| method | tasks per pass | merge tensors GiB | adaptation above inputs GiB | of which not the merge GiB "
          "| peak RSS GiB | adapt s (build + 1 step) at the measured depths |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        method, _, per_pass = case.partition(":")
        tasks_per_pass = None if per_pass == "all" else int(per_pass)
        results = {
            depth: measure(
                {**common, "method": method, "tasks_per_pass": tasks_per_pass, "layers": depth}, args.threads
            )  # fmt: skip
            for depth in depths
        }
        merge = projected({d: r["merge_mib"] for d, r in results.items()}, depths) / 1024
        above = projected({d: r["peak_rss_mib"] - inputs_mib[d] for d, r in results.items()}, depths) / 1024
        peak = projected({d: r["peak_rss_mib"] for d, r in results.items()}, depths) / 1024
        seconds = " / ".join(f"{results[d]['seconds']:.0f}" for d in depths)
        label = "all" if tasks_per_pass is None else str(tasks_per_pass)
        print(f"| {method} | {label} | {merge:.1f} | {above:.1f} | {above - merge:.1f} | {peak:.1f} | {seconds} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
