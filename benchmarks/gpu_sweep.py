"""A paper-sized evaluation job through the real verbs: pass times of a CART sweep and AdaMerging's step time.

Synthetic inputs at the real sizes, in a scratch folder:
- a model directory of `--model` (open_clip's architecture, random weights: timing does not depend on them);
- one fine-tuned encoder per task, θ_t = θ_0 + N(0, 0.001²);
- per task a random unit-norm head with the task's real class count;
- per task val and test splits at the 8-task suite's sizes (`eval_cost.SPLIT_SIZES`, as the paper configs
  prepare them): a bank of `--bank` smooth random 224² uint8 images repeated, labelled with θ_0's predictions through
  that head (random labels can leave an accuracy at 0, which the normalisation rightly refuses).

Then four jobs run as the pipeline runs them (`python -m mergeflow.commands.main <verb>`, device auto, evaluation
defaults unless given): evaluate-reference, decompose --kind centered, merge-eval --method cart over a reduced
grid with those factors, and adapt-eval --method adamerging (layer-wise, `--adapt-steps` steps, 16 unlabeled
test images per task and step). The verbs log one line per evaluation pass and the adaptation's step time and
peak device memory; this script reads them back. The accuracies mean nothing here.

    python benchmarks/gpu_sweep.py                                         # on a GPU: the full sizes
    python benchmarks/gpu_sweep.py --scale 0.01 --bank 8 --tasks MNIST DTD --adapt-steps 2 --device cpu  # CPU trial
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.modules.setdefault("transformers", None)  # type: ignore[arg-type]  (open_clip's HF text towers; unused)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from eval_cost import SPLIT_SIZES  # noqa: E402  (benchmarks/ is on sys.path)
from eval_throughput import machine, smooth_images, spec_of  # noqa: E402

from mergeflow.data import TaskClasses, save_classes, save_split  # noqa: E402
from mergeflow.evaluation.accuracy import predict  # noqa: E402
from mergeflow.image_tasks import get_task  # noqa: E402
from mergeflow.io import save_state_dict  # noqa: E402
from mergeflow.models.clip import build_clip, save_model_dir  # noqa: E402
from mergeflow.models.heads import save_head  # noqa: E402
from mergeflow.runtime.device import select_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS_8 = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]

PASS_LINE = re.compile(r" (\S+) (val|test) pass at (\{.*\}): merge ([\d.]+) s, (\d+) images in ([\d.]+) s")
ZEROSHOT_LINE = re.compile(r"zero-shot (val|test) pass: (\d+) images in ([\d.]+) s")
STEPS_LINE = re.compile(r"merge built in ([\d.]+) s; (\d+) steps in ([\d.]+) s")
MEMORY_LINE = re.compile(r"peak device memory during adaptation ([\d.]+) GiB, ([\d.]+) GiB of it held before")


def split_sizes(task: str, scale: float) -> tuple[int, int]:
    val, test = SPLIT_SIZES[task]
    return max(1, round(val * scale)), max(1, round(test * scale))


def write_inputs(root: Path, model: str, tasks: list[str], scale: float, bank_size: int, device: torch.device
                 ) -> dict[str, list[str]]:  # fmt: skip
    """The model directory, fine-tuned encoders, heads and task data; the files the verbs take, per task."""
    torch.manual_seed(0)
    spec = spec_of(model)
    clip = build_clip(spec)
    save_model_dir(root / "model", spec, clip)
    pretrained = {key: value.detach().clone() for key, value in clip.visual.state_dict().items()}
    visual = clip.visual.to(device).eval()  # labels the banks with θ_0's own predictions
    embed_dim = int(spec.open_clip_config["embed_dim"])
    generator = torch.Generator().manual_seed(1)
    paths: dict[str, list[str]] = {"finetuned": [], "heads": [], "data": []}
    for index, task in enumerate(tasks):
        tuned = {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in pretrained.items()}
        paths["finetuned"].append(str(root / "finetuned" / f"{task}.safetensors"))
        save_state_dict(paths["finetuned"][-1], tuned, {"model": model, "task": task})
        classnames = get_task(task).classnames
        head = F.normalize(torch.randn(len(classnames), embed_dim, generator=generator), dim=-1)
        paths["heads"].append(str(root / "heads" / f"{task}.safetensors"))
        save_head(paths["heads"][-1], head, torch.tensor(4.6052), task=task, model=model)
        bank = smooth_images(bank_size, spec.image_size, seed=10 + index)
        bank_labels = predict(visual, head.to(device), bank, spec, device, batch_size=256)
        directory = root / "data" / task
        for split, count in zip(("val", "test"), split_sizes(task, scale)):
            save_split(directory, split, np.resize(bank, (count, *bank.shape[1:])), np.resize(bank_labels, count))
        save_classes(directory, task, TaskClasses(tuple(classnames), ("a photo of a {}.",)))
        paths["data"].append(str(directory))
    return paths


def run_verb(verb: str, arguments: list[str], log_path: Path, env: dict[str, str]) -> float:
    """Run `mergeflow <verb>` in a fresh interpreter with its log in `log_path`; its wall seconds."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(
            [sys.executable, "-m", "mergeflow.commands.main", verb, "--no-progress", *arguments], stderr=log, env=env
        ).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        sys.stderr.write(log_path.read_text()[-4000:])
        raise RuntimeError(f"mergeflow {verb} failed with exit code {code}; log {log_path}")
    print(f"  {verb}: {seconds:.1f} s", flush=True)
    return seconds


def pass_summary(passes: list[dict[str, float]]) -> dict[str, float]:
    """First pass (it includes the device's warm-up) and the median of the others, in seconds and images/s."""
    seconds = [p["seconds"] for p in passes]
    steady = seconds[1:] or seconds
    images = passes[0]["images"]
    median = statistics.median(steady)
    return {"passes": len(passes), "images": images, "first_s": seconds[0], "median_s": median,
            "images_per_s": images / median}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--tasks", nargs="+", default=TASKS_8, help="tasks whose class counts and sizes are used")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real split sizes (CPU trials)")
    parser.add_argument("--ranks", type=float, nargs="+", default=[0.08, 0.16], help="cart's reduced rank grid")
    parser.add_argument("--lams", type=float, nargs="+", default=[1.0, 1.5, 2.0], help="cart's reduced lam grid")
    parser.add_argument("--bank", type=int, default=256, help="distinct images per task (a split repeats them)")
    parser.add_argument("--adapt-steps", type=int, default=30, help="adamerging steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resident-mb", type=float, default=None, help="evaluation.resident_mb (verb default)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gpu_sweep.json")
    parser.add_argument("--logs", type=Path, default=None, help="write the four verbs' logs into this one file")
    args = parser.parse_args(argv)
    unknown = [task for task in args.tasks if task not in SPLIT_SIZES]
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; expected names of {sorted(SPLIT_SIZES)}")
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="mergeflow-gpu-sweep-"))
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    # The verbs lease the GPU as a workstation job does, from a lock folder of their own.
    env["MERGEFLOW_LEASE_DIR"] = str(scratch / "gpu-leases")
    started = time.perf_counter()
    paths = write_inputs(scratch, args.model, args.tasks, args.scale, args.bank, select_device(args.device))
    inputs_s = time.perf_counter() - started
    print(f"inputs written in {inputs_s:.1f} s under {scratch}", flush=True)
    common = ["--model-dir", str(scratch / "model"), "--tasks", *args.tasks, "--heads", *paths["heads"],
              "--data", *paths["data"], "--finetuned", *paths["finetuned"], "--device", args.device]  # fmt: skip
    if args.resident_mb is not None:
        common += ["--resident-mb", str(args.resident_mb)]
    reference, factors = str(scratch / "reference.csv"), str(scratch / "factors.safetensors")
    grid = json.dumps({"rank": args.ranks, "lam": args.lams})
    adamerging = json.dumps({"granularity": "layer", "steps": args.adapt_steps, "batch_size": 16})
    jobs = {
        "evaluate-reference": [*common, "--out", reference],
        "decompose": ["--pretrained", str(scratch / "model" / "pretrained.safetensors"), "--finetuned",
                      *paths["finetuned"], "--kind", "centered", "--out", factors, "--device", args.device],
        "merge-eval": [*common, "--method", "cart", "--grid", grid, "--reference", reference, "--factors", factors,
                       "--out", str(scratch / "cart.csv")],
        "adapt-eval": [*common, "--method", "adamerging", "--settings", adamerging, "--reference", reference,
                       "--learned", str(scratch / "learned.safetensors"), "--entropy", str(scratch / "entropy.csv"),
                       "--out", str(scratch / "adamerging.csv")],
    }  # fmt: skip
    walls: dict[str, float] = {}
    text: dict[str, str] = {}
    try:
        for verb, arguments in jobs.items():  # each job reads the one before's output: stop at a failure
            log_path = scratch / f"{verb}.log"
            try:
                walls[verb] = run_verb(verb, arguments, log_path, env)
            finally:
                text[verb] = log_path.read_text() if log_path.exists() else ""
    finally:
        if args.logs:
            args.logs.parent.mkdir(parents=True, exist_ok=True)
            args.logs.write_text("".join(f"===== mergeflow {verb}\n{body}" for verb, body in text.items()))
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    report = summary(text, args) | {"inputs_s": inputs_s, "verb_wall_s": walls}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    val, test, ada = report["val"], report["test"], report["adamerging"]
    print(f"machine: {report['machine']}")
    print(f"val pass: {val['images']} images, {val['median_s']:.2f} s ({val['images_per_s']:.0f} images/s; first "
          f"{val['first_s']:.2f} s, {val['passes']} passes); test pass: {test['images']} images, "
          f"{test['median_s']:.2f} s ({test['images_per_s']:.0f} images/s; {test['passes']} passes); "
          f"merge per grid point {report['merge_s']:.3f} s")  # fmt: skip
    memory_text = f", peak device memory {ada['peak_gib']:.2f} GiB" if ada["peak_gib"] is not None else ""
    print(f"adamerging (layer, {len(args.tasks)} tasks × 16 images): {ada['seconds_per_step']:.3f} s per step over "
          f"{ada['steps']} steps, merge built in {ada['build_s']:.2f} s{memory_text}")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


def summary(text: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    """Pass times, merge times and the adaptation's step time and memory, read from the verbs' logs."""
    passes = [
        {"split": m[2], "setting": m[3], "merge_s": float(m[4]), "images": int(m[5]), "seconds": float(m[6])}
        for m in PASS_LINE.finditer(text["merge-eval"])
    ]
    zeroshot = {m[1]: {"images": int(m[2]), "seconds": float(m[3])} for m in ZEROSHOT_LINE.finditer(
        text["evaluate-reference"])}  # fmt: skip
    steps = STEPS_LINE.search(text["adapt-eval"])
    memory = MEMORY_LINE.search(text["adapt-eval"])
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    return {
        "machine": machine(device), "model": args.model, "tasks": args.tasks, "scale": args.scale,
        "grid": {"rank": args.ranks, "lam": args.lams}, "zeroshot_passes": zeroshot,
        "val": pass_summary([p for p in passes if p["split"] == "val"]),
        "test": pass_summary([p for p in passes if p["split"] == "test"]),
        "merge_s": statistics.median(p["merge_s"] for p in passes),
        "passes": passes,
        "adamerging": {
            "steps": int(steps[2]), "build_s": float(steps[1]), "steps_s": float(steps[3]),
            "seconds_per_step": float(steps[3]) / max(1, int(steps[2])), "batch_per_task": 16,
            "peak_gib": float(memory[1]) if memory else None, "held_before_gib": float(memory[2]) if memory else None,
        },
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
