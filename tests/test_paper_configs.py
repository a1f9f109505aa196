"""The paper configs: generated consistently, valid against the schema, and their DAGs build."""

from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper"
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def _generator():
    spec = importlib.util.spec_from_file_location("paper_configs", PAPER / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(name: str) -> dict:
    return yaml.safe_load((PAPER / name).read_text())


def test_committed_configs_are_what_the_generator_writes():
    rendered = _generator().rendered()
    assert sorted(rendered) == sorted(path.name for path in PAPER.glob("*.yaml"))
    assert len(rendered) == 9
    for name, text in rendered.items():
        assert (PAPER / name).read_text() == text, f"{name} is stale: rerun python config/paper/generate.py"


@pytest.mark.parametrize(
    ("name", "num_tasks", "released"),
    [("vit-b-32-8.yaml", 8, (0.12, 2.0)), ("vit-b-16-14.yaml", 14, (0.16, 1.5)), ("vit-l-14-20.yaml", 20, (0.32, 1.9))],
)
def test_paper_configs_are_valid_and_carry_the_released_cart_setting(name, num_tasks, released):
    config = _load(name)
    validate(config, SCHEMA)
    assert len(config["tasks"]) == num_tasks
    assert config["tasks"][:8] == ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
    assert (config["methods"]["cart@released"]["rank"], config["methods"]["cart@released"]["lam"]) == released
    assert released[0] in config["methods"]["cart"]["rank"] and released[1] in config["methods"]["cart"]["lam"]
    assert config["finetune"]["lr"] == 1e-5 and config["finetune"]["batch_size"] == 128


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["data"].update(source="tiny"), "tiny"),
        (lambda c: c["model"].pop("open_clip"), "open_clip"),
        (lambda c: c.update(finetuned={"source": "url", "urls": {"DTD": {"url": "https://x/y.pt"}}}), "sha256"),
        (lambda c: c["methods"].update({"cart@": {}}), "cart@"),
        (lambda c: c["model"]["open_clip"].update(name="ViT-H-14"), "ViT-H-14"),
    ],
)
def test_schema_rejects_inconsistent_paper_configs(change, message):
    config = copy.deepcopy(_load("vit-b-32-8.yaml"))
    change(config)
    with pytest.raises(WorkflowError, match=re.escape(message)):
        validate(config, SCHEMA)


def _dry_run(tmp_path: Path, config: dict) -> str:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
        "--configfile", str(tmp_path / "config.yaml"), "--cores", "4",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def _job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def test_the_largest_paper_dag_builds_with_every_real_source(tmp_path):
    output = _dry_run(tmp_path, _load("vit-l-14-20.yaml"))
    assert _job_counts(output) == {
        "fetch_pretrained": 1,
        "prepare_data": 20,
        "build_head": 20,
        "fetch_finetuned": 20,
        "decompose": 2,
        "evaluate_reference": 1,
        "merge_eval": 12,
        "adapt_eval": 3,
        "adaptation_figures": 4,
        "lambda_rank": 1,
        "spectrum": 1,
        "aggregate": 1,
        "all": 1,
        "total": 87,
    }
    assert "mergeflow fetch-pretrained --model ViT-L-14 --pretrained openai --image-size 224" in output
    assert "mergeflow prepare-data --source huggingface --task EMNIST --image-size 224" in output
    assert "--emnist-split digits" in output
    assert "results/paper20/ViT-L-14/eval/cart@released.csv" in output
    assert "--method cart@released" in output
    # GPU jobs (heads, SVD, evaluations, adaptations) ask for one GPU each; downloads, data and tables for none.
    requests = re.findall(r"^\s+resources: (.*)$", output, re.MULTILINE)
    assert sum("gpu=1" in line for line in requests) == 20 + 2 + 1 + 12 + 3
    assert all("mem_mb=" in line and "runtime=" in line for line in requests if "gpu=1" in line)


def test_a_cpu_config_asks_for_no_gpu(tmp_path):
    config = _load("vit-b-32-8.yaml")
    config["device"] = "cpu"
    output = _dry_run(tmp_path, config)
    assert "gpu=1" not in output and "gpu=0" in output


def test_a_configfile_replaces_the_default_config(tmp_path):
    """Run where config/config.yaml exists (as in a clone): none of the tiny default's methods may leak in."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    config = _load("vit-b-32-8.yaml")
    config["methods"] = {"weight_averaging": {}}
    counts = _job_counts(_dry_run(tmp_path, config))
    assert counts["merge_eval"] == 1 and "pretrain" not in counts


def test_fine_tuning_replaces_fetching_when_the_config_says_so(tmp_path):
    config = _load("vit-l-14-8.yaml")
    config["finetuned"] = {"source": "finetune"}
    output = _dry_run(tmp_path, config)
    counts = _job_counts(output)
    assert counts["finetune"] == 8 and "fetch_finetuned" not in counts
    assert "--batch-size 128 --micro-batch-size 32 --lr 1e-05" in output
