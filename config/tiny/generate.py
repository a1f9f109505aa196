"""Write config/tiny14.yaml and config/tiny20.yaml from the default config (tiny8).

They are the default with another benchmark name and task list: the same θ_0 (pre-trained on all twenty
tiny tasks), data, fine-tuning and method grids, so the three suites differ only in the number of tasks,
as the paper's 8/14/20-task suites do. Edit config/config.yaml, rerun `python config/tiny/generate.py`,
commit the results (a test checks that the committed files are what this script writes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1]
SUITE_SIZES = (14, 20)


def suite_config(default: dict, num_tasks: int) -> dict:
    """The default config with the first `num_tasks` tasks of the pre-training mixture (tiny8's come first)."""
    mixture = list(default["pretrain"]["tasks"])
    if mixture[: len(default["tasks"])] != list(default["tasks"]):
        raise SystemExit("config/config.yaml: pretrain.tasks must start with the tiny8 tasks, in their order")
    return {**default, "benchmark": f"tiny{num_tasks}", "tasks": mixture[:num_tasks]}


def render(config: dict, num_tasks: int) -> str:
    header = (
        f"# tiny{num_tasks}: the default config (tiny8, config/config.yaml) with {num_tasks} tiny tasks; written by\n"
        "# config/tiny/generate.py, do not edit by hand. Every key is explained in config/README.md.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, width=120, default_flow_style=None)


def main() -> None:
    default = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())
    for num_tasks in SUITE_SIZES:
        path = CONFIG_DIR / f"tiny{num_tasks}.yaml"
        path.write_text(render(suite_config(default, num_tasks), num_tasks))
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
