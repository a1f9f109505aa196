"""tiny14 and tiny20: generated from the default, valid, and equal to it but for the benchmark and its tasks."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from mergeflow.tiny import TINY_TASKS

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config"
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def _generator():
    spec = importlib.util.spec_from_file_location("tiny_configs", CONFIG / "tiny" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tiny_configs_are_what_the_generator_writes() -> None:
    generator = _generator()
    default = yaml.safe_load((CONFIG / "config.yaml").read_text())
    for num_tasks in generator.SUITE_SIZES:
        expected = generator.render(generator.suite_config(default, num_tasks), num_tasks)
        assert (CONFIG / f"tiny{num_tasks}.yaml").read_text() == expected, "rerun python config/tiny/generate.py"


@pytest.mark.parametrize("num_tasks", [14, 20])
def test_tiny_suites_differ_from_the_default_only_in_their_tasks(num_tasks: int) -> None:
    default = yaml.safe_load((CONFIG / "config.yaml").read_text())
    suite = yaml.safe_load((CONFIG / f"tiny{num_tasks}.yaml").read_text())
    validate(copy.deepcopy(suite), SCHEMA)  # validate() fills in defaults
    assert suite["benchmark"] == f"tiny{num_tasks}"
    assert suite["tasks"] == list(TINY_TASKS)[:num_tasks]
    assert suite["tasks"][:8] == default["tasks"]
    rest = {key: value for key, value in suite.items() if key not in ("benchmark", "tasks")}
    assert rest == {key: value for key, value in default.items() if key not in ("benchmark", "tasks")}


def test_all_tiny_suites_share_one_pretraining_mixture_of_every_tiny_task() -> None:
    default = yaml.safe_load((CONFIG / "config.yaml").read_text())
    assert default["pretrain"]["tasks"] == list(TINY_TASKS)
    assert len(TINY_TASKS) == 20
