"""Fine-tune the default config's tasks with its settings and ship the encoders (resources/tiny-clip/finetuned/).

Runs the workflow's own rules (the shipped θ_0, prepare_data, build_head, finetune at one thread per job, on the
CPU) in a temporary directory with `finetune.shipped` removed, then copies each fine-tuned encoder and writes
its recipe: the fine-tuning settings, the sha256 of the files it was made from (θ_0, the text tower and the
class names its head is built from, the train split), its own sha256, and the machine, CPU kernels and torch
version. With `multitask: true` (the default config) it does the same for the encoder fine-tuned on all tasks
at once (rule finetune_multitask), shipped as multitask/<benchmark>.safetensors with its recipe (the settings,
the task list and every task's files). With --check it only reports whether a fresh fine-tuning reproduces the
shipped encoders byte for byte. Run both with the AVX2 kernels (README, "What is bitwise"), the set the shipped
encoders were made with:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
    python config/tiny/ship_finetuned.py          # after changing θ_0, finetune.*, data.* or a tiny task
    python config/tiny/ship_finetuned.py --check  # (with the same three variables)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from workflow_run import REPO, check_only, default_config, made_with, run_targets


def main() -> int:
    check = check_only(__doc__, "fine-tuning")
    from mergeflow.shipped.finetuned import (
        encoder_path,
        finetune_inputs,
        finetune_recipe,
        multitask_dir,
        multitask_recipe,
        read_finetune_recipe,
        ship_finetuned,
    )
    from mergeflow.training.finetune import FinetuneSettings

    config = default_config()
    shipped = REPO / config["finetune"]["shipped"]
    name, tasks, benchmark = config["model"]["name"], list(config["tasks"]), config["benchmark"]
    unshipped = {k: v for k, v in config["finetune"].items() if k != "shipped"}
    settings = FinetuneSettings(**unshipped)
    # (folder it ships into, its name there, the encoder under results/finetuned/<model>/): each task's, then the
    # multi-task one when the config trains it.
    encoders = [(shipped, task, f"{task}.safetensors") for task in tasks]
    if config.get("multitask", False):
        encoders.append((multitask_dir(shipped), benchmark, f"multitask/{benchmark}.safetensors"))
    same = True
    with tempfile.TemporaryDirectory() as scratch:
        results = Path(scratch) / "results"
        run_targets({**config, "finetune": unshipped}, Path(scratch),
                    [f"results/finetuned/{name}/{target}" for _, _, target in encoders])  # fmt: skip
        model_dir = results / "models" / name
        for folder, label, target in encoders:
            encoder = results / "finetuned" / name / target
            if check:
                recipe = read_finetune_recipe(folder, label)
                equal = recipe is not None and encoder.read_bytes() == encoder_path(folder, label).read_bytes()
                origin = f"shipped on {recipe['made_with']}" if recipe else "not shipped"
                print(f"{target}: {'identical' if equal else 'DIFFERS'} ({origin})")
                same &= equal
                continue
            if folder == shipped:  # a task's own encoder
                recipe = finetune_recipe(settings.as_recipe(), finetune_inputs(model_dir, results / "data" / label))
            else:
                data_dirs = {task: results / "data" / task for task in tasks}
                recipe = multitask_recipe(settings.as_recipe(), model_dir, data_dirs)
            recipe = ship_finetuned(encoder, folder, label, recipe, made_with("ship_finetuned.py", threads=1))
            print(f"shipped {encoder_path(folder, label)}: {recipe['sha256']}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
