"""Disk that each paper config's run leaves under results/ and in the hub cache, computed from sizes.

Nothing is downloaded: tensor sizes come from open_clip's architectures (built on the meta device), split sizes
from the official counts below, class counts from mergeflow's task registry. Per config (model × task count):
- prepared data (results/data/<task>, shared by every model): uint8 224×224×3 images (150,528 bytes each) and
  int64 labels in .npy files, for val and test, and for train only where a job fine-tunes. Val is held out of
  train as the experts' code did, min(5000, int(0.1 · N)), except EuroSAT, whose experts had a val folder;
- θ_0 and the text tower (results/models), the zero-shot heads (results/heads);
- the T fine-tuned image encoders (results/finetuned), float32 safetensors;
- the SVD factors (results/svd): for each of the two kinds the paper configs decompose (centered for cart,
  original for lowrank_ta and tsv_m), each task's thin SVD U (m×r), S (r), Vᵀ (r×n), r = min(m, n), of every
  2-D tensor of the image encoder (mergeflow.merging.factors), float32;
- the hub cache: open_clip's served CLIP (open_clip_model.safetensors, float32), and per task the fetched
  expert, task_vectors' ImageEncoder.state_dict() without the text transformer (src/models/modeling.py of
  nik-dim/tall_masks @d10af8b), float32. Fine-tuning here fetches no experts.
Not counted: the hub's copies of the datasets (compressed images, their size depends on the mirror), the
evaluation tables and figures (a few MB), and safetensors/zip headers (under 0.1 MB a file).

    python benchmarks/paper_disk.py      # markdown table for README
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import open_clip
import torch

from mergeflow.image_tasks.provenance import prepared_split_sizes
from mergeflow.image_tasks.registry import TASK_GROUPS, get_task

MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
IMAGE_BYTES = 224 * 224 * 3
LABEL_BYTES = 8
NPY_HEADER_BYTES = 128
FLOAT_BYTES = 4
FACTOR_KINDS = 2  # centered and original: the paper configs run cart and lowrank_ta / tsv_m


def stored_splits(task: str) -> dict[str, int]:
    """Examples per prepared split (`data.source: experts`; train as when a job fine-tunes)."""
    return prepared_split_sizes(task)


def split_bytes(examples: int) -> int:
    return examples * IMAGE_BYTES + NPY_HEADER_BYTES + examples * LABEL_BYTES + NPY_HEADER_BYTES


@dataclass(frozen=True)
class Architecture:
    encoder: int  # bytes of the float32 image encoder
    clip: int  # bytes of the float32 whole CLIP
    expert_file: int  # bytes of a task_vectors ImageEncoder state dict (the CLIP without its text transformer)
    factors_per_task: int  # bytes of one task's thin SVD factors of every 2-D image-encoder tensor
    embed_dim: int


def architecture(model: str) -> Architecture:
    with torch.device("meta"):
        clip = open_clip.model.CLIP(**open_clip.get_model_config(model))
    state = clip.state_dict()
    visual = {key: value for key, value in state.items() if key.startswith("visual.")}
    factors = 0
    for value in visual.values():
        if value.ndim == 2:
            rows, cols = value.shape
            rank = min(rows, cols)
            factors += FLOAT_BYTES * (rows * rank + rank + rank * cols)
    return Architecture(
        encoder=FLOAT_BYTES * sum(value.numel() for value in visual.values()),
        clip=FLOAT_BYTES * sum(value.numel() for value in state.values()),
        expert_file=FLOAT_BYTES * sum(v.numel() for k, v in state.items() if not k.startswith("transformer.")),
        factors_per_task=factors,
        embed_dim=int(clip.visual.output_dim),
    )


def config_disk(model: str, num_tasks: int, arch: Architecture) -> dict[str, float]:
    """Bytes per part of one paper config's run."""
    tasks = TASK_GROUPS[num_tasks]
    splits = {task: stored_splits(task) for task in tasks}
    eval_data = sum(split_bytes(s["val"]) + split_bytes(s["test"]) for s in splits.values())
    train_data = sum(split_bytes(s["train"]) for s in splits.values())
    heads = sum(len(get_task(task).classnames) * arch.embed_dim * FLOAT_BYTES for task in tasks)
    return {
        "eval_data": eval_data,
        "train_data": train_data,
        "models": arch.clip + heads,  # θ_0 and text tower: the whole CLIP
        "finetuned": num_tasks * arch.encoder,
        "factors": FACTOR_KINDS * num_tasks * arch.factors_per_task,
        "hub_clip": arch.clip,
        "hub_experts": num_tasks * arch.expert_file,
    }


def gb(value: float) -> str:
    return f"{value / 1e9:,.1f}"


def table() -> str:
    lines = [
        "| config | data: val + test | data: train | θ_0, text tower, heads | fine-tuned encoders | SVD factors "
        "| hub cache: θ_0 / experts | total, fetched experts | total, fine-tuned here |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        arch = architecture(model)
        for num_tasks in TASK_GROUPS:
            d = config_disk(model, num_tasks, arch)
            common = d["eval_data"] + d["models"] + d["finetuned"] + d["factors"] + d["hub_clip"]
            lines.append(
                f"| {model.lower()}-{num_tasks} | {gb(d['eval_data'])} | {gb(d['train_data'])} | {gb(d['models'])} "
                f"| {gb(d['finetuned'])} | {gb(d['factors'])} | {gb(d['hub_clip'])} / {gb(d['hub_experts'])} "
                f"| {gb(common + d['hub_experts'])} | {gb(common + d['train_data'])} |"
            )
    return "\n".join(lines)


def main() -> int:
    print("GB (10^9 bytes) per paper config; prepared data is shared by the three models.\n")
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
