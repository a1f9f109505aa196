"""The workflow config check: every shipped config passes; each mistake gives one readable line naming the
key path, and Snakemake stops before building anything. Fuzzed documents give a clean error, never a crash."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergeflow.dag.config_check import ConfigError, check_config

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
# The default config with the tiny suites' test-time adaptive methods added, as the seed benchmark runs it.
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
DEFAULT["methods"].update(yaml.safe_load((REPO / "config" / "tiny" / "adaptive.yaml").read_text())["methods"])
SHIPPED = sorted([*REPO.glob("config/*.yaml"), *REPO.glob("config/paper/*.yaml")])


def problems_of(config: dict) -> list[str]:
    try:
        check_config(config, SCHEMA, repository=REPO)
    except ConfigError as err:
        assert str(err).startswith(f"invalid config ({len(err.problems)} problem")
        return err.problems
    return []


def changed(edit) -> dict:
    config = copy.deepcopy(DEFAULT)
    edit(config)
    return config


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_config_passes(path: Path) -> None:
    assert problems_of(yaml.safe_load(path.read_text())) == []


BAD = {
    "unknown task": (
        lambda c: c.update(tasks=["shapes", "colour"]),
        ["tasks[1]: unknown task 'colour' for data.source 'tiny' (did you mean 'colours'?)"],
    ),
    "unknown pretrain task": (
        lambda c: c["pretrain"].update(tasks=["shapes", "nope"]),
        ["pretrain.tasks[1]: unknown tiny task 'nope'"],
    ),
    "real task on tiny data": (
        lambda c: c.update(tasks=["MNIST"]),
        ["tasks[0]: unknown task 'MNIST' for data.source 'tiny'"],
    ),
    "rank above 1 and a string λ": (
        lambda c: c["methods"].update(cart={"rank": [0.1, 1.5], "lam": [1.0, "x"]}),
        [
            "methods.cart: hyper-parameter 'lam': expected a number, got 'x'",
            "methods.cart: hyper-parameter 'rank': 1.5 is outside [0, 1]",
        ],
    ),
    "unknown hyper-parameter": (
        lambda c: c["methods"].update(ties={"k": 0.2, "topk": 0.1}),
        ["methods.ties: unknown hyper-parameter 'topk'; ties accepts: k, lam, merge"],
    ),
    "unknown method": (
        lambda c: c["methods"].update(carts={}),
        ["methods.carts: unknown method 'carts' (did you mean 'cart'?)"],
    ),
    "modifier on a method with one model per task": (
        lambda c: c["methods"].update({"emr+svc": {}}),
        ["methods.emr+svc: emr+svc: emr cannot take a modifier (it gives no single merged model)"],
    ),
    "unknown modifier": (
        lambda c: c["methods"].update({"cart+svd": {}}),
        ["methods.cart+svd: cart+svd: unknown modifier 'svd'; valid modifiers: svc"],
    ),
    "modifier on an adaptive method": (
        lambda c: c["methods"].update({"adarank+svc": {}}),
        ["methods.adarank+svc: adarank is a test-time adaptive method; modifiers apply to static merges"],
    ),
    "modifier hyper-parameter out of range": (
        lambda c: c["methods"].update({"cart+svc": {"rank": 0.1, "lam": 1.0, "alpha": [0.1, 0.0]}}),
        ["methods.cart+svc: hyper-parameter 'alpha': 0 is outside (0, inf)"],
    ),
    "task of a method with one model per task": (
        lambda c: c["methods"].update(emr={"task": [0, 1]}),
        ["methods.emr.task: set by the sweep (every task gets its own model), not a config"],
    ),
    "adaptive type": (
        lambda c: c["methods"].update(adamerging={"steps": "ten"}),
        ["methods.adamerging.steps: expected int, got 'ten'"],
    ),
    "adaptive range": (
        lambda c: c["methods"].update(adamerging={"lr": -1.0}),
        ["methods.adamerging: setting 'lr' must be a positive number, got -1.0"],
    ),
    "adaptive missing setting": (
        lambda c: c["methods"].update(adarank={"base": "cart", "initial_rank": 0.1}),
        ["methods.adarank: missing setting(s) ['prior'], required by adarank"],
    ),
    "selected without cart": (
        lambda c: (c["methods"].pop("cart"), c["methods"].update(adamerging_cart={"rank": "selected", "lam": 1.0})),
        [
            "methods.adamerging_cart.rank: 'selected' needs the cart method in the same config",
            "methods.adarank.initial_rank: 'selected' needs the cart method in the same config",
        ],
    ),
    "selected on a static method": (
        lambda c: c["methods"].update({"cart@mine": {"rank": "selected", "lam": 1.0}}),
        ["methods.cart@mine.rank: 'selected' is only for adaptive methods'"],
    ),
    "adaptive batch above the test split": (
        lambda c: c["methods"].update(adamerging={"batch_size": 501}),
        ["methods.adamerging.batch_size: 501 is more than data.test_size 500 images"],
    ),
    "benchmark escaping results": (
        lambda c: c.update(benchmark=".."),
        ["benchmark: '..' names a folder under results/"],
    ),
    "model name with a slash": (
        lambda c: c["model"].update(name="../elsewhere"),
        ["model.name: '../elsewhere' is not allowed; expected letters, digits, '_', '.' and '-' only"],
    ),
    "shipped outside the repository": (
        lambda c: c["model"].update(shipped="/etc"),
        ["model.shipped: '/etc' must be a folder inside the repository"],
    ),
    "multi-task encoder without a recipe": (
        lambda c: (c.pop("finetune"), c.update(finetuned={"source": "local", "directory": "experts"}, multitask=True)),
        ["(top level): 'finetune' is required here (because multitask is True)"],
    ),
    "multi-task switch that is no boolean": (
        lambda c: c.update(multitask="yes"),
        ["multitask: expected boolean, got 'yes' (str)"],
    ),
    "shipped encoders outside the repository": (
        lambda c: c["finetune"].update(shipped="../../elsewhere"),
        ["finetune.shipped: '../../elsewhere' must be a folder inside the repository"],
    ),
    "mistyped shipped encoders": (
        lambda c: c["finetune"].update(shipped="resources/tiny-clip/finetuend"),
        ["finetune.shipped: 'resources/tiny-clip/finetuend' is not a folder of the repository"],
    ),
    "mistyped shipped θ_0": (
        lambda c: c["model"].update(shipped="resources/tiny_clip"),
        ["model.shipped: 'resources/tiny_clip' is not a folder of the repository"],
    ),
    "conditional rule": (
        lambda c: c["data"].update(source="huggingface"),
        ["data.source: 'huggingface' is not allowed here; expected 'tiny' (because model.source is 'pretrain')"],
    ),
    "unknown key with a hint": (
        lambda c: c["evaluation"].update(batchsize=64),
        ["evaluation: unknown key(s) ['batchsize'] (did you mean 'batch_size'?)"],
    ),
    "wrong type": (
        lambda c: c["finetune"].update(steps=2.5),
        ["finetune.steps: expected integer, got 2.5 (float)"],
    ),
    "fine-tuned source without the task": (
        lambda c: c.update(finetuned={"source": "url", "urls": {}}),
        [f"finetuned.urls: no entry for task {task!r}" for task in DEFAULT["tasks"]],
    ),
    "task_vectors without pickle or directory": (
        lambda c: c.update(finetuned={"source": "task_vectors"}),
        [
            "finetuned.allow_pickle: must be true for source 'task_vectors' (pickled whole modules)",
            "finetuned.directory: required by source 'task_vectors'",
            "model.name: finetuned.source 'task_vectors' has no checkpoints for 'tiny-clip'",
            *(
                f"tasks: finetuned.source 'task_vectors' has no checkpoint for {task!r} (its release has the 8 tasks)"
                for task in DEFAULT["tasks"]
            ),
        ],
    ),
    "fine-tuned source key of another source": (
        lambda c: c.update(finetuned={"source": "local", "directory": "x", "repo_id": "y"}),
        ["finetuned: unknown key(s) ['repo_id'] for source 'local'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_mistake_names_its_key_path(case: str) -> None:
    edit, expected = BAD[case]
    problems = problems_of(changed(edit))
    assert len(problems) == len(expected), problems
    for line in expected:
        assert any(problem.startswith(line) for problem in problems), (line, problems)


def test_all_mistakes_are_reported_at_once() -> None:
    def edit(config: dict) -> None:
        config["tasks"] = ["shapes", "nosuchtask"]
        config["methods"]["cart"]["rank"] = [2.0]
        config["benchmark"] = ".."

    assert len(problems_of(changed(edit))) == 3


def test_snakemake_stops_with_the_message_before_creating_anything(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(changed(lambda c: c.update(tasks=["shapes", "nosuchtask"]))))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "config.yaml"), "--cores", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    assert "invalid config (1 problem):\n  - tasks[1]: unknown task 'nosuchtask'" in run.stderr
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    # Snakemake's own .snakemake/ bookkeeping folder may exist; nothing else, and no results/.
    assert sorted(path.name for path in tmp_path.iterdir()) in (["config.yaml"], [".snakemake", "config.yaml"])


# Documents near the default: each draw replaces a few values anywhere in the tree by arbitrary JSON values.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


PATHS = [path for path in _paths(DEFAULT) if path]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), JSON_VALUES), min_size=1, max_size=3))
def test_fuzzed_configs_pass_or_give_a_clean_error(replacements) -> None:
    config = copy.deepcopy(DEFAULT)
    for path, value in replacements:
        node = config
        try:
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this branch
    for problem in problems_of(config):
        assert isinstance(problem, str) and problem and "\n" not in problem


def command_line(*entries: str) -> dict:
    """The default config with `snakemake --config entries` applied, as Snakemake hands it to the Snakefile."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    from mergeflow.dag.config_check import command_line_values, load_schema

    config = copy.deepcopy(DEFAULT)
    update_config(config, parse_config(list(entries)))
    return command_line_values(config, load_schema(SCHEMA))


def test_command_line_strings_become_the_booleans_numbers_and_nulls_the_schema_expects() -> None:
    config = command_line("job_server=false", "evaluation={batch_size: 64, resident_mb: 1.5e3, precision: fp16}",
                          "methods={cart: {rank: [0.1, 1], lam: 2}, adarank: {steps: 20, initial_rank: selected}}",
                          "finetune={shipped: null, lr: 3e-4}", "data={seed: 3}")  # fmt: skip
    assert config["job_server"] is False
    assert config["evaluation"] == {"batch_size": 64, "resident_mb": 1500.0, "precision": "fp16"}
    assert config["methods"]["cart"] == {"rank": [0.1, 1], "lam": 2}
    assert config["methods"]["adarank"]["steps"] == 20 and config["methods"]["adarank"]["initial_rank"] == "selected"
    assert config["finetune"]["shipped"] is None and config["finetune"]["lr"] == 3e-4
    assert config["data"] == {**DEFAULT["data"], "seed": 3}
    assert problems_of(config) == []


def test_a_command_line_string_that_is_no_number_still_meets_the_schema() -> None:
    assert problems_of(command_line("job_server=maybe")) == ["job_server: expected boolean, got 'maybe' (str)"]
    assert problems_of(command_line("evaluation={batch_size: many}")) == [
        "evaluation.batch_size: expected integer, got 'many' (str)"
    ]
    assert command_line("model={shipped: '1'}")["model"]["shipped"] == "1"  # a string key stays a string


def test_snakemake_accepts_false_typed_on_its_command_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(DEFAULT))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", "--dry-run", "--printshellcmds", "--config",
         "job_server=false", "evaluation={batch_size: 64}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "invalid config" not in run.stderr
    assert "mergeflow evaluate-reference" in run.stdout and "--batch-size 64 " in run.stdout
