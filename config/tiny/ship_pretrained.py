"""Pre-train the tiny θ_0 with the default config's settings and ship it (resources/tiny-clip/).

Runs the workflow's own `pretrain` rule (two threads, on the CPU) in a temporary directory with
`model.shipped` removed, then copies the model directory and writes recipe.json: the settings it was made
with, each file's sha256, and the machine and torch version. With --check it only reports whether a fresh
pre-training reproduces the shipped files byte for byte (the safetensors headers included).

    python config/tiny/ship_pretrained.py          # after changing model.*, pretrain.* or data.domain_style
    python config/tiny/ship_pretrained.py --check
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare a fresh pre-training with the shipped files")
    args = parser.parse_args()
    import torch

    from mergeflow.shipped import MODEL_FILES, read_recipe, recipe_of, ship

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    shipped = REPO / config["model"]["shipped"]
    name = config["model"]["name"]
    with tempfile.TemporaryDirectory() as work:
        fresh = {**config, "model": {k: v for k, v in config["model"].items() if k != "shipped"}, "device": "cpu"}
        (Path(work) / "config.yaml").write_text(yaml.safe_dump(fresh))
        target = f"results/models/{name}/pretrained.safetensors"
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", work,
                   "--configfile", f"{work}/config.yaml", "--cores", "2", "--quiet", target]  # fmt: skip
        subprocess.run(command, check=True)
        model_dir = Path(work) / "results" / "models" / name
        if args.check:
            recipe = read_recipe(shipped)
            same = [(model_dir / f).read_bytes() == (shipped / f).read_bytes() for f in MODEL_FILES]
            for file, equal in zip(MODEL_FILES, same):
                print(f"{file}: {'identical' if equal else 'DIFFERS'}")
            print(f"shipped on: {recipe['made_with']}")
            return 0 if all(same) else 1
        made_with = {
            "command": "python config/tiny/ship_pretrained.py",
            "machine": f"{platform.machine()} {cpu_name()}, 2 threads",
            "torch": torch.__version__,
        }
        recipe = ship(model_dir, shipped, recipe_of(config), made_with)
    print(f"shipped {shipped}: {recipe['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
