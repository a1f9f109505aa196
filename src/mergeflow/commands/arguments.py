"""Argument helpers every verb module shares: JSON values, list lengths, and the runtime and evaluation options."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from mergeflow.io import InputError


def json_value(text: str) -> object:
    """argparse `type` of every JSON-valued option: a parse error is a usage error naming the option."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None


def check_same_length(args: argparse.Namespace, names: Sequence[str]) -> None:
    lengths = {name: len(getattr(args, name)) for name in names}
    if len(set(lengths.values())) != 1:
        raise InputError(f"these lists must have one entry per task: {lengths}")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if visible, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="disable progress bars")


def add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    """The inputs and evaluation options of every verb that measures accuracy on all tasks."""
    p.add_argument("--model-dir", required=True)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--heads", nargs="+", required=True, help="one head file per task, in --tasks order")
    p.add_argument("--data", nargs="+", required=True, help="one prepared task directory per task")
    p.add_argument("--finetuned", nargs="+", required=True, help="one fine-tuned image encoder per task")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="autocast precision; auto: fp16 on CUDA, fp32 on the CPU (config: evaluation.precision)",
    )
    p.add_argument(
        "--resident-mb",
        type=float,
        default=4096.0,
        help="MiB of uint8 images kept on the device between sweep points; the rest is streamed",
    )
    p.add_argument("--out", required=True, help="CSV file")
    p.add_argument(
        "--correct",
        required=True,
        help="safetensors file for the per-image test correctness behind the CSV's selected test rows",
    )
    add_runtime_arguments(p)
