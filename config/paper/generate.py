"""Write config/paper/<model>-<T>.yaml for the paper's 3 models × 8/14/20 tasks.

The nine configs differ only in model, task list and CART's released setting; generating them keeps
them consistent. Edit this file, rerun `python config/paper/generate.py`, commit both (a test checks
that the committed files are what this script writes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from mergeflow.dag.resources import MAX_RUNTIME_MINUTES, job_resources
from mergeflow.image_tasks.registry import TASK_GROUPS

SUITES = {count: list(tasks) for count, tasks in TASK_GROUPS.items()}
MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
# The CART authors' released (rank ratio, λ) per task count; published for ViT-B/32 (docs/methods.md) and
# used for every model, since no per-model setting was released.
RELEASED_CART = {8: (0.12, 2.0), 14: (0.16, 1.5), 20: (0.32, 1.9)}

RANKS = [0.0, 0.02, 0.04, 0.08, 0.12, 0.16, 0.32, 0.64, 1.0]


def methods(model: str, num_tasks: int) -> dict:
    rank, lam = RELEASED_CART[num_tasks]
    # ViT-L/14's activations for 20 tasks' batches of 16 take about 124 GiB at once, one task's about 9 GiB
    # (benchmarks/adaptation_memory.py), so it adapts one task per pass; the smaller encoders pass all at once.
    per_pass = {"tasks_per_pass": 1} if model == "ViT-L-14" else {}
    return {
        "weight_averaging": {},
        "task_arithmetic": {"lam": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]},
        "ties": {"k": 0.2, "lam": [0.5, 0.8, 1.0, 1.2, 1.5, 2.0]},
        "dare": {"p": [0.3, 0.5, 0.7], "base": "task_arithmetic", "lam": [0.1, 0.2, 0.3, 0.4, 0.5]},
        "magmax": {"lam": [0.3, 0.5, 0.7, 1.0]},
        "consensus": {"k": 2, "mask_lam": [0.2, 0.4, 0.6], "lam": [0.2, 0.3, 0.4, 0.5, 0.7, 1.0]},
        "tsv_m": {"lam": [0.6, 0.8, 1.0, 1.2, 1.5]},
        "iso_c": {"lam": [0.6, 0.8, 1.0, 1.2, 1.5, 2.0]},
        "iso_cts": {"common_fraction": 0.8, "lam": [0.6, 0.8, 1.0, 1.2, 1.5, 2.0]},
        "lowrank_ta": {"rank": list(RANKS), "lam": [0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]},
        "cart": {"rank": list(RANKS), "lam": [0.5, 1.0, 1.5, 1.9, 2.0, 2.5, 3.0]},
        "cart@released": {"rank": rank, "lam": lam},
        # WUDI as its authors run it: 300 Adam steps of lr 1e-5 per matrix, λ 1.
        "wudi": {},
        # Singular value calibration of three merges' results; α around FusionBench's defaults (0.1 for task
        # arithmetic, 0.2 for Iso-CTS; CART has none). Each (rank, λ, α) is calibrated on its own.
        "task_arithmetic+svc": {"lam": [0.3, 0.5, 0.7, 1.0], "alpha": [0.1, 0.5, 1.0]},
        "iso_cts+svc": {"common_fraction": 0.8, "lam": [1.0, 1.5, 2.0], "alpha": [0.1, 0.2, 0.5, 1.0]},
        "cart+svc": {"rank": [0.08, 0.12, 0.16, 0.32], "lam": [1.5, 2.0, 2.5, 3.0], "alpha": [0.1, 0.5, 1.0]},
        # Data-based: statistics of each expert on 256 of its task's training images (task_statistics.images).
        "regmean": {"reduce_non_diagonal_ratio": [0.7, 0.8, 0.9, 0.95]},
        "regmean_plusplus": {"reduce_non_diagonal_ratio": [0.8, 0.95]},
        "fisher": {},
        # One model per task (the task is known at inference): an upper reference.
        "emr": {},
        # Test-time adaptation with the official settings (docs/methods.md): layer-wise AdaMerging, Adam lr 1e-3,
        # batches of 16, 500 steps (AdaRank 10000), λ from 0.3 clamped to [0, 1]; AdaMerging + CART and
        # AdaRank start from CART's val-selected rank and λ.
        "adamerging": {"granularity": "layer", "steps": 500, "batch_size": 16, "lr": 1.0e-3, "init": 0.3,
                       **per_pass},  # fmt: skip
        "adamerging_cart": {"rank": "selected", "lam": "selected", "steps": 500, "batch_size": 16, "lr": 1.0e-3,
                            **per_pass},  # fmt: skip
        "adarank": {"base": "cart", "initial_rank": "selected", "prior": "selected", "steps": 10000,
                    "batch_size": 16, "lr": 1.0e-3, **per_pass},  # fmt: skip
    }


def paper_config(model: str, num_tasks: int) -> dict:
    return {
        "benchmark": f"paper{num_tasks}",
        "device": "auto",
        "hub": {"cache_dir": None},
        "model": {"name": model, "source": "open_clip", "open_clip": {"name": model, "pretrained": "openai"}},
        "tasks": SUITES[num_tasks],
        # Each task read as the experts' code read it, so that val is the split they held out (README: "The
        # experts' protocol"); data.root holds the experts' folders (DTD, EuroSAT, SUN397, RESISC45, Stanford Cars)
        # and receives torchvision's downloads.
        "data": {"source": "experts", "root": "data/experts", "revision": "main", "emnist_split": "digits"},
        "heads": {"class_texts": "auto"},
        "finetuned": {"source": "tall_masks", "allow_pickle": False},
        "finetune": {
            "steps": 2000,
            "batch_size": 128,
            "micro_batch_size": 32 if model == "ViT-L-14" else 128,
            "lr": 1.0e-5,
            "weight_decay": 0.1,
            "warmup_steps": 500,
            "grad_clip": 1.0,
            "seed": 0,
        },
        "multitask": False,
        "evaluation": {"batch_size": 256},
        "methods": methods(model, num_tasks),
    }


def header(model: str, num_tasks: int) -> str:
    return (
        f"# {model} (OpenAI weights) on the paper's {num_tasks} tasks. Generated by config/paper/generate.py;\n"
        "# every key is explained in config/README.md. Run:\n"
        f"#   snakemake --cores all --configfile config/paper/{config_name(model, num_tasks)}\n"
    )


def multitask_comment(config: dict) -> str:
    """Above `multitask: false`: how to opt in and what it costs (YAML dumps carry no comments of their own)."""
    tasks, steps = len(config["tasks"]), config["finetune"]["steps"]
    minutes = job_resources("finetune_multitask", config["model"]["name"], tasks, config["finetune"])["runtime"]
    # A job that asks for more than the default limit stops the DAG, so opting in then needs a higher limit too.
    limit = f": over resources.max_runtime_min's default {MAX_RUNTIME_MINUTES}, so raise it too" if (
        minutes > MAX_RUNTIME_MINUTES) else ""  # fmt: skip
    return (
        f"# Set true for the multi-task reference row: one more encoder fine-tuned on all {tasks} tasks at once with\n"
        f"# the finetune recipe above, {tasks} × {steps} = {tasks * steps} steps of {config['finetune']['batch_size']} "
        f"images (as long as fine-tuning every expert),\n# one job that requests {minutes} min{limit}.\n"
    )


def with_multitask_comment(text: str, config: dict) -> str:
    line = "\nmultitask: false\n"
    if text.count(line) != 1:
        raise SystemExit("expected one top-level `multitask: false` line in the rendered config")
    return text.replace(line, f"\n{multitask_comment(config)}{line[1:]}")


def config_name(model: str, num_tasks: int) -> str:
    return f"{model.lower()}-{num_tasks}.yaml"


def rendered() -> dict[str, str]:
    texts = {}
    for model in MODELS:
        for n in SUITES:
            config = paper_config(model, n)
            dumped = yaml.safe_dump(config, sort_keys=False, width=120, default_flow_style=None)
            texts[config_name(model, n)] = header(model, n) + with_multitask_comment(dumped, config)
    return texts


def main() -> int:
    directory = Path(__file__).resolve().parent
    for name, text in rendered().items():
        (directory / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
