"""Pre-train the tiny θ_0 with the default config's settings and ship it (resources/tiny-clip/).

Runs the workflow's own `pretrain` rule (two threads, on the CPU) in a temporary directory with
`model.shipped` removed, then copies the model directory and writes recipe.json: the settings it was made
with, each file's sha256, and the machine and torch version. With --check it only reports whether a fresh
pre-training reproduces the shipped files byte for byte (the safetensors headers included).

    python config/tiny/ship_pretrained.py          # after changing model.*, pretrain.* or data.domain_style
    python config/tiny/ship_pretrained.py --check
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from workflow_run import REPO, check_only, default_config, made_with, run_targets


def main() -> int:
    check = check_only(__doc__, "pre-training")
    from mergeflow.shipped.theta0 import MODEL_FILES, read_recipe, recipe_of, ship

    config = default_config()
    shipped = REPO / config["model"]["shipped"]
    name = config["model"]["name"]
    with tempfile.TemporaryDirectory() as work:
        fresh = {**config, "model": {k: v for k, v in config["model"].items() if k != "shipped"}}
        run_targets(fresh, Path(work), [f"results/models/{name}/pretrained.safetensors"])
        model_dir = Path(work) / "results" / "models" / name
        if check:
            recipe = read_recipe(shipped)
            same = [(model_dir / f).read_bytes() == (shipped / f).read_bytes() for f in MODEL_FILES]
            for file, equal in zip(MODEL_FILES, same):
                print(f"{file}: {'identical' if equal else 'DIFFERS'}")
            print(f"shipped on: {recipe['made_with']}")
            return 0 if all(same) else 1
        recipe = ship(model_dir, shipped, recipe_of(config), made_with("ship_pretrained.py", threads=2))
    print(f"shipped {shipped}: {recipe['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
