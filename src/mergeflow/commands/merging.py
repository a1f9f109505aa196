"""`mergeflow merge` and `mergeflow methods`: the command-line face of the merging engine and its registry."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergeflow.io import InputError

if TYPE_CHECKING:
    from mergeflow.merging.hparams import HParam
    from mergeflow.merging.registry import MergeMethod, MergeModifier

# The engine (and torch) is imported inside the commands so that building the `mergeflow` parser,
# which every pipeline job does, stays fast.


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `merge` and `methods`; each sets `func(args) -> exit code`."""
    merge = subparsers.add_parser(
        "merge",
        help="merge fine-tuned image encoders into one",
        description="Merge safetensors state dicts (identical keys and shapes) tensor by tensor and write the "
        "result atomically. `mergeflow methods` lists the methods and their hyper-parameters.",
    )
    merge.add_argument(
        "--method", required=True, metavar="NAME", help="merge method, e.g. cart, or with a modifier: cart+svc"
    )
    merge.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="hyper-parameter value, repeatable (e.g. --set rank=0.08 --set lam=1.0)",
    )
    merge.add_argument("--pretrained", required=True, type=Path, help="pretrained encoder (.safetensors)")
    merge.add_argument("--finetuned", required=True, nargs="+", type=Path, help="fine-tuned encoders, one per task")
    merge.add_argument("--output", required=True, type=Path, help="where to write the merged encoder")
    merge.add_argument(
        "--task-statistics",
        nargs="+",
        type=Path,
        default=(),
        metavar="FILE",
        help="for regmean and fisher: each fine-tuned encoder's statistics (`mergeflow task-statistics`), same order",
    )
    merge.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="compute device (default auto: cuda when available, else cpu)",
    )
    merge.set_defaults(func=run_merge)
    methods = subparsers.add_parser(
        "methods", help="list every merging method (static and test-time adaptive) with its settings and defaults"
    )
    methods.set_defaults(func=run_methods)


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE strings to a dict; a malformed or repeated key is an InputError."""
    overrides: dict[str, str] = {}
    for item in items:
        key, separator, value = item.partition("=")
        key = key.strip()
        if not separator or not key:
            raise InputError(f"--set {item!r}: expected KEY=VALUE")
        if key in overrides:
            raise InputError(f"--set {key}: given more than once")
        overrides[key] = value
    return overrides


def format_value(value: Any) -> str:
    """A hyper-parameter value as it would be written after `--set key=`."""
    if isinstance(value, tuple):
        return ",".join(format_value(item) for item in value)
    return str(value)


def format_hparams(hparams: dict[str, Any]) -> str:
    if not hparams:
        return "(none)"
    return ", ".join(f"{key}={format_value(value)}" for key, value in hparams.items())


def run_merge(args: argparse.Namespace) -> int:
    import torch

    from mergeflow.merging.streaming import merge_files

    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: CUDA is not available on this machine")
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        summary = merge_files(
            args.method,
            args.pretrained,
            args.finetuned,
            parse_overrides(args.overrides),
            args.output,
            device=device,
            progress=True,
            task_statistics=args.task_statistics,
        )
    except InputError as err:
        print(f"mergeflow merge: error: {err}", file=sys.stderr)
        return 2
    print(f"method: {summary.method}")
    print(f"hyper-parameters: {format_hparams(dict(summary.hparams))}")
    print(f"tasks: {len(args.finetuned)}")
    print(f"tensors touched: {summary.tensors_touched} of {summary.tensors_total}")
    print(f"output: {summary.output}")
    return 0


def run_methods(args: argparse.Namespace) -> int:
    """Every method a config's `methods` may name: the static merges under a `#` line per group (what they need),
    the modifiers any static merge takes, then the test-time adaptive methods."""
    from mergeflow.adaptive.settings import SETTINGS_CLASSES, describe_settings
    from mergeflow.merging.registry import METHODS, MODIFIERS, NEEDS_GROUPS

    for needs, group in NEEDS_GROUPS.items():
        print(f"# {group}")
        for method in METHODS.values():
            if method.needs == needs:
                print("\n".join(describe_method(method)))
    print("# modifiers: write <method>+<modifier> (e.g. cart+svc); the modifier's settings join the method's grid")
    for modifier in MODIFIERS.values():
        print("\n".join(describe_modifier(modifier)))
    for settings in SETTINGS_CLASSES.values():
        print("\n".join(describe_settings(settings)))
    return 0


def describe_params(params: Sequence[HParam]) -> list[str]:
    if not params:
        return ["    (no hyper-parameters)"]
    return [
        f"    {param.name} ({param.type_name}, default {format_value(param.default)}; {param.allowed}): {param.summary}"
        for param in params
    ]


def describe_method(method: MergeMethod) -> list[str]:
    return [f"{method.name} ({method.display}): {method.summary}", *describe_params(method.params)]


def describe_modifier(modifier: MergeModifier) -> list[str]:
    return [f"+{modifier.name} ({modifier.display}): {modifier.summary}", *describe_params(modifier.params)]
