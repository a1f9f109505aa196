"""Benchmark of the merging engine on open_clip-shaped random weights: wall time and peak RSS per case.

Every case runs in a fresh Python subprocess; its peak RSS is the child's own `ru_maxrss`, read with
`os.wait4` when it exits, and its wall time is measured inside the child after imports. Cases:

  sweep     ViT-B-32 shapes, a 7-point cart rank sweep: SVD factors once + 7 merges from them,
            against 7 merges that each decompose again (the baseline of that table)
  methods   ViT-B-32 shapes, every method once, streamed from safetensors files (`merge_files`)
  large     ViT-L-14 shapes, many tasks, cart and tsv_m streamed: peak RSS against the size of all models

A `baseline` child that only imports torch and mergeflow gives the RSS every case starts from.
Scale it down with --layers / --tasks / --large-layers / --large-tasks on small machines.

    python benchmarks/merge_engine.py --layers 2 --tasks 8 --large-layers 1 --large-tasks 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from child_process import SRC, measure_child  # benchmarks/ is on sys.path

SWEEP_RANKS = (0.02, 0.04, 0.08, 0.12, 0.16, 0.24, 0.32)


@dataclass(frozen=True)
class VisionShape:
    """The image-encoder geometry of an open_clip ViT."""

    name: str
    width: int
    layers: int
    patch: int
    tokens: int
    embed_dim: int


VIT_B_32 = VisionShape("ViT-B-32", width=768, layers=12, patch=32, tokens=50, embed_dim=512)
VIT_L_14 = VisionShape("ViT-L-14", width=1024, layers=24, patch=14, tokens=257, embed_dim=768)


def state_dict_shapes(shape: VisionShape, layers: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of open_clip's `visual` state dict (without the `visual.` prefix)."""
    width = shape.width
    shapes: dict[str, tuple[int, ...]] = {
        "conv1.weight": (width, 3, shape.patch, shape.patch),
        "class_embedding": (width,),
        "positional_embedding": (shape.tokens, width),
        "ln_pre.weight": (width,),
        "ln_pre.bias": (width,),
    }
    for index in range(layers):
        block = f"transformer.resblocks.{index}."
        shapes.update(
            {
                block + "ln_1.weight": (width,),
                block + "ln_1.bias": (width,),
                block + "attn.in_proj_weight": (3 * width, width),
                block + "attn.in_proj_bias": (3 * width,),
                block + "attn.out_proj.weight": (width, width),
                block + "attn.out_proj.bias": (width,),
                block + "ln_2.weight": (width,),
                block + "ln_2.bias": (width,),
                block + "mlp.c_fc.weight": (4 * width, width),
                block + "mlp.c_fc.bias": (4 * width,),
                block + "mlp.c_proj.weight": (width, 4 * width),
                block + "mlp.c_proj.bias": (width,),
            }
        )
    shapes.update({"ln_post.weight": (width,), "ln_post.bias": (width,), "proj": (width, shape.embed_dim)})
    return shapes


def write_models(directory: Path, shapes: dict[str, tuple[int, ...]], tasks: int) -> tuple[Path, list[Path]]:
    """θ_0 ~ N(0, 0.02²) and θ_t = θ_0 + N(0, 0.001²), one model in memory at a time."""
    import torch

    from mergeflow.io import save_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    pretrained = {key: 0.02 * torch.randn(size, generator=generator) for key, size in shapes.items()}
    save_state_dict(directory / "pretrained.safetensors", pretrained)
    paths = []
    for task in range(tasks):
        path = directory / f"task{task:02d}.safetensors"
        noise = {key: 1e-3 * torch.randn(value.shape, generator=generator) for key, value in pretrained.items()}
        save_state_dict(path, {key: value + noise[key] for key, value in pretrained.items()})
        paths.append(path)
    return directory / "pretrained.safetensors", paths


def run_case(case: dict[str, Any]) -> None:
    """Child side: do one case and print its wall time (after imports) as JSON."""
    import torch

    from mergeflow.io import load_state_dict
    from mergeflow.merging import compute_task_factors, merge_files, merge_state_dicts

    started = time.perf_counter()
    kind = case["kind"]
    if kind in ("sweep_cached", "sweep_recompute"):
        pretrained = load_state_dict(case["pretrained"])
        finetuned = [load_state_dict(path) for path in case["finetuned"]]
        factors = compute_task_factors(pretrained, finetuned, centered=True) if kind == "sweep_cached" else None
        for rank in SWEEP_RANKS:
            merged = merge_state_dicts("cart", pretrained, finetuned, {"rank": rank}, factors=factors)
            del merged
    elif kind == "stream":
        merge_files(case["method"], case["pretrained"], case["finetuned"], case["hparams"], case["output"])
    elif kind != "baseline":
        raise ValueError(f"unknown case {kind}")
    print(json.dumps({"seconds": time.perf_counter() - started, "threads": torch.get_num_threads()}))


def measure(case: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run one case in a fresh interpreter; return its wall time and peak RSS (MiB)."""
    return measure_child(__file__, case, threads)


def size_mib(paths: list[Path]) -> float:
    return sum(path.stat().st_size for path in paths) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=VIT_B_32.layers, help="ViT-B-32 residual blocks (12)")
    parser.add_argument("--tasks", type=int, default=8, help="ViT-B-32 tasks (8)")
    parser.add_argument("--large-layers", type=int, default=VIT_L_14.layers, help="ViT-L-14 residual blocks (24)")
    parser.add_argument("--large-tasks", type=int, default=20, help="ViT-L-14 tasks (20)")
    parser.add_argument("--cases", default="sweep,methods,large", help="comma-separated subset of sweep,methods,large")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per child (1)")
    parser.add_argument("--workdir", type=Path, help="where to write the models (default: a temporary directory)")
    args = parser.parse_args()
    if args.child:
        run_case(json.loads(args.child))
        return
    sys.path.insert(0, str(SRC))
    from mergeflow.merging import METHODS

    cases = set(args.cases.split(","))
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        workdir = Path(scratch)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
        print(f"command: {' '.join(sys.argv)}\n")
        baseline = measure({"kind": "baseline"}, args.threads)
        print(f"baseline child (imports only): peak RSS {baseline['peak_rss_mib']:.0f} MiB\n")

        if cases & {"sweep", "methods"}:
            shapes = state_dict_shapes(VIT_B_32, args.layers)
            pretrained, finetuned = write_models(workdir / "b32", shapes, args.tasks)
            files = [str(pretrained), *map(str, finetuned)]
            models = size_mib([pretrained, *finetuned])
            print(f"ViT-B-32 shapes, {args.layers} blocks, {args.tasks} tasks: {models:.0f} MiB of models on disk\n")

        if "sweep" in cases:
            common = {"pretrained": files[0], "finetuned": files[1:]}
            recompute = measure({"kind": "sweep_recompute", **common}, args.threads)
            cached = measure({"kind": "sweep_cached", **common}, args.threads)
            print(f"(a) cart rank sweep {SWEEP_RANKS}, in memory\n")
            print("| case | wall s | peak RSS MiB | RSS above baseline MiB | time vs recompute |")
            print("|---|---|---|---|---|")
            for name, result in (("recompute the SVDs for every rank", recompute), ("SVD once, 7 ranks", cached)):
                print(
                    f"| {name} | {result['seconds']:.1f} | {result['peak_rss_mib']:.0f} | "
                    f"{result['peak_rss_mib'] - baseline['peak_rss_mib']:.0f} | "
                    f"{result['seconds'] / recompute['seconds']:.2f} |"
                )
            print()

        if "methods" in cases:
            print("(b) every method once, streamed from files (defaults; dare and consensus also with base=ties)\n")
            print("| method | wall s | peak RSS MiB | RSS above baseline MiB | time vs task_arithmetic |")
            print("|---|---|---|---|---|")
            runs = [(name, {}) for name in METHODS] + [("dare", {"base": "ties"}), ("consensus", {"base": "ties"})]
            results = []
            for name, hparams in runs:
                case = {"kind": "stream", "method": name, "hparams": hparams, "pretrained": files[0]}
                case.update({"finetuned": files[1:], "output": str(workdir / "merged.safetensors")})
                results.append((name, hparams, measure(case, args.threads)))
            reference = next(result for name, _, result in results if name == "task_arithmetic")
            for name, hparams, result in results:
                label = name + "".join(f" {key}={value}" for key, value in hparams.items())
                print(
                    f"| {label} | {result['seconds']:.1f} | {result['peak_rss_mib']:.0f} | "
                    f"{result['peak_rss_mib'] - baseline['peak_rss_mib']:.0f} | "
                    f"{result['seconds'] / reference['seconds']:.2f} |"
                )
            print()

        if "large" in cases:
            shapes = state_dict_shapes(VIT_L_14, args.large_layers)
            pretrained, finetuned = write_models(workdir / "l14", shapes, args.large_tasks)
            models = size_mib([pretrained, *finetuned])
            largest = max(4 * (size[0] * size[1] if len(size) == 2 else 1) for size in shapes.values()) / 2**20
            print(
                f"(c) ViT-L-14 shapes, {args.large_layers} blocks, {args.large_tasks} tasks, streamed: "
                f"{models:.0f} MiB of models, largest tensor {largest:.0f} MiB\n"
            )
            print("| method | wall s | peak RSS MiB | RSS above baseline MiB | above baseline / all models |")
            print("|---|---|---|---|---|")
            for name in ("cart", "tsv_m"):
                case = {"kind": "stream", "method": name, "hparams": {}, "pretrained": str(pretrained)}
                case.update({"finetuned": list(map(str, finetuned)), "output": str(workdir / "merged.safetensors")})
                result = measure(case, args.threads)
                print(
                    f"| {name} | {result['seconds']:.1f} | {result['peak_rss_mib']:.0f} | "
                    f"{result['peak_rss_mib'] - baseline['peak_rss_mib']:.0f} | "
                    f"{(result['peak_rss_mib'] - baseline['peak_rss_mib']) / models:.2f} |"
                )
            print()


if __name__ == "__main__":
    main()
