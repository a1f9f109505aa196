"""WUDI's time and memory per residual block at ViT-L/14 shapes (d = 1024), on the GPU when there is one.

One block's four matrices (attention in_proj 3072×1024 and out_proj 1024×1024, MLP c_fc 4096×1024 and c_proj
1024×4096) with T random task vectors of a fine-tuned encoder's size, each optimised by
`mergeflow.merging.methods.wudi.wudi_vector` as a merge does. Steps are timed after one warm-up step and
scaled to `--iterations` (the authors' 300); a ViT-L/14 has 24 such blocks. Peak memory: CUDA's allocator on a
GPU, the process's peak RSS growth on the CPU. Run from the repository root:

    python benchmarks/wudi_layer.py --tasks 8 --steps 5            # CPU: a few steps, scaled
    python benchmarks/wudi_layer.py --tasks 20 --steps 300 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from mergeflow.merging.methods.wudi import wudi_vector

SHAPES = {
    "attn.in_proj_weight": (3072, 1024),
    "attn.out_proj.weight": (1024, 1024),
    "mlp.c_fc.weight": (4096, 1024),
    "mlp.c_proj.weight": (1024, 4096),
}
BLOCKS = 24


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="Adam steps timed per matrix")
    parser.add_argument("--iterations", type=int, default=300, help="steps a merge takes (the authors' --iter)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_matrix = {}
    for key, shape in SHAPES.items():
        vectors = (1e-3 * torch.randn(args.tasks, *shape, generator=generator)).to(device)
        wudi_vector(vectors, 1, 1e-5)
        synchronize(device)
        started = time.perf_counter()
        wudi_vector(vectors, args.steps, 1e-5)
        synchronize(device)
        per_matrix[key] = (time.perf_counter() - started) / args.steps * args.iterations
        del vectors
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        where = torch.cuda.get_device_name(device)
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, " \
                f"{torch.backends.cpu.get_cpu_capability()}"  # fmt: skip
    block = sum(per_matrix.values())
    print(json.dumps({
        "device": where, "tasks": args.tasks, "steps_timed": args.steps, "iterations": args.iterations,
        "seconds_per_matrix": {key: round(value, 2) for key, value in per_matrix.items()},
        "seconds_per_block": round(block, 1), "minutes_per_vit_l14": round(BLOCKS * block / 60, 1),
        "peak_memory_mb": round(peak_mb),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
